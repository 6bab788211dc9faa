"""Anomaly detection: models that return their anomaly score, MVTec AD and one-class data,
image/pixel AUROC, and the task's model manager.

Importing this package imports torch only; the model manager is imported by
``cv_tasks.get_model_manager("anomaly_detection")``, data sets by their modules.
"""

__all__: list[str] = []
