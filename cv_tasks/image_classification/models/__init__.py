"""Image classifiers for 32x32 inputs (CIFAR); importing this registers them."""

from cv_tasks.image_classification.models.densenet import CifarDenseNet, cifar_densenet_tiny
from cv_tasks.image_classification.models.mobilenetv2 import CifarMobileNetV2, cifar_mobilenetv2
from cv_tasks.image_classification.models.resnet import CifarResNet, cifar_resnet18, cifar_resnet34
from cv_tasks.image_classification.models.vgg import CifarVGG, cifar_vgg16

__all__ = [
    "CifarDenseNet",
    "CifarMobileNetV2",
    "CifarResNet",
    "CifarVGG",
    "cifar_densenet_tiny",
    "cifar_mobilenetv2",
    "cifar_resnet18",
    "cifar_resnet34",
    "cifar_vgg16",
]
