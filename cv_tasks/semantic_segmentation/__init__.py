"""Semantic segmentation: models (and, later, data and model managers)."""
