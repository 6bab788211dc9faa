"""The classification model manager, registered for the task: ``CommonModelManager``
already is it (``(data, target)`` batches, top-1 accuracy)."""

from cv_tasks.registry import MODEL_MANAGERS
from legodnn.model_manager import CommonModelManager

__all__ = ["CommonModelManager"]

MODEL_MANAGERS.register("image_classification", CommonModelManager)
