"""Action recognition on short video clips: models (and, later, data and model managers)."""
