"""Write a trained blocks directory: a source store's files with new descendant weights."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import torch

from ..blockmanager.store import BlockStore, copy_file_atomic, remove_manifest, write_file_atomic, write_manifest

__all__ = ["write_trained_store"]

Key = Tuple[str, float]


def write_trained_store(
    source: BlockStore,
    target_dir: Path,
    weights: Mapping[Key, Mapping[str, torch.Tensor]],
    trained: Dict[str, Any],
) -> BlockStore:
    """Copy ``source`` to ``target_dir`` with the descendants in ``weights`` replaced.

    ``trained`` is merged into the manifest's ``"trained"`` record (epochs, losses).
    The manifest goes last and is read back, so a store that cannot be opened fails
    here and not on the device.
    """
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    manifest = copy.deepcopy(source.manifest)
    remove_manifest(target_dir)
    copy_file_atomic(source.root / manifest["frame"]["file"], target_dir / manifest["frame"]["file"])
    for block in manifest["blocks"]:
        for desc in block["descendants"]:
            key = (block["spec"]["name"], float(desc["sparsity"]))
            target = target_dir / desc["file"]
            if key in weights:
                desc["sha256"] = write_file_atomic(target, weights[key])
            elif source.root.resolve() != target_dir.resolve():
                copy_file_atomic(source.root / desc["file"], target)
    manifest["trained"] = {**manifest.get("trained", {}), **trained}
    write_manifest(target_dir, manifest)
    return BlockStore(target_dir)
