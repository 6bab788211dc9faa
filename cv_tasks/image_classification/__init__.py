"""Image classification: models (``models``), data sets (``datasets``) and teacher training (``train``).

Importing this registers the models; ``datasets`` and ``train`` are imported when used.
"""
