"""Image classification: models (and, later, data and model managers)."""
