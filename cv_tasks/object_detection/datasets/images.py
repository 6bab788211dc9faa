"""Reading one image file, with an error that names the file when it is missing or corrupt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cv_tasks.object_detection.datasets.errors import DatasetNotFoundError

__all__ = ["read_image"]


def read_image(path: Path) -> Any:
    """The RGB PIL image at ``path``; ``DatasetNotFoundError`` if missing, ``ValueError`` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DatasetNotFoundError(f"image {path} named in the annotations does not exist; "
                                   "check the image folder passed with the annotation file")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot decode image {path} ({exc}); replace or remove the corrupt file") from exc
