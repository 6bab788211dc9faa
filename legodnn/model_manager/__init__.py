"""Per-task model managers: how legodnn runs, scores and measures a model."""

from legodnn.model_manager.abstract_model_manager import AbstractModelManager
from legodnn.model_manager.common_model_manager import CommonModelManager

__all__ = ["AbstractModelManager", "CommonModelManager"]
