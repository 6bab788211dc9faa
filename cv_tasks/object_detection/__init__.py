"""Object detection: models, data, metric and model manager (filled in by its issue)."""
