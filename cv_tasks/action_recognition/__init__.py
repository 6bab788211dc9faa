"""Action recognition on video clips: TSN / R3D / R(2+1)D / C3D models, UCF101 and HMDB51 data,
clip- and video-level top-k accuracy, and the task's model manager.

Only the models are imported here (they register themselves); import
``cv_tasks.action_recognition.datasets`` (OpenCV on use) and ``.model_manager`` as needed.
"""
