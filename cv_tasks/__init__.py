"""Models (and, per task, data and model managers) for the vision tasks legodnn targets.

Importing the package registers the built-in models, so ``list_models()`` and
``get_model(name)`` see them (the ``_*_models`` imports below are for that
side effect). Only torch is imported: task modules that need
torchvision (data sets, detectors) import it themselves, when they are used.
"""

from cv_tasks.action_recognition import models as _action_recognition_models  # noqa: F401
from cv_tasks.anomaly_detection import models as _anomaly_detection_models  # noqa: F401
from cv_tasks.image_classification import models as _classification_models  # noqa: F401
from cv_tasks.object_detection import models as _detection_models  # noqa: F401
from cv_tasks.pose_estimation import models as _pose_models  # noqa: F401
from cv_tasks.registry import (
    ModelInfo,
    Registry,
    get_model,
    get_model_builder,
    get_model_info,
    get_model_manager,
    list_models,
    list_tasks,
    register_model,
    register_model_manager,
)
from cv_tasks.semantic_segmentation import models as _segmentation_models  # noqa: F401

__all__ = [
    "ModelInfo",
    "Registry",
    "get_model",
    "get_model_builder",
    "get_model_info",
    "get_model_manager",
    "list_models",
    "list_tasks",
    "register_model",
    "register_model_manager",
]
