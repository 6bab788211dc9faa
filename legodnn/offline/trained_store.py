"""Write a trained blocks directory: a source store's files with new descendant weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import torch

from ..blockmanager.store import TRAINING_DIR, BlockStore

__all__ = ["write_trained_store"]

Key = Tuple[str, float]


def write_trained_store(
    source: BlockStore,
    target_dir: Path,
    weights: Mapping[Key, Mapping[str, torch.Tensor]],
    trained: Dict[str, Any],
) -> BlockStore:
    """Write ``target_dir`` as ``source`` with the descendants in ``weights`` replaced.

    ``trained`` is merged into the manifest's training record. The new store appears in
    one step (the previous contents of ``target_dir``, a work folder or an older store
    of the same model, stay readable until then); its ``training/`` state is carried
    over so a rerun resumes instead of starting again.
    """
    return source.write_copy(target_dir, weights, trained, keep=(TRAINING_DIR,))
