"""One rank of the descendant-parallel and SyncBatchNorm tests (tests/test_distributed.py).

``python dist_parallel_job.py CONFIG_JSON`` under the test's launcher (torchrun's
environment variables), or :func:`run` in the test's own process for the one-process
reference. Config keys: ``compressed``, ``target``, ``out`` (folders); ``model``
("functional" or "sequential", from tests/zoo.py); ``parallel`` ("data" or
"descendants"); ``sync_batchnorm``; ``shuffle`` (the training loader shuffles, drawing
from the global generator, seeded ``100 + rank_seed_step * rank``: ranks that do not
share rank 0's generators read other batches); ``composition_epochs``;
``checkpoint_steps``; ``timeout_s``; ``die`` (``[rank, batch]``: that rank kills itself
while collating its ``batch``-th training batch, counting the one the first-batch check
reads). Each rank writes its history, composition losses and a digest of the weights it
hands to the store writer to ``<out>/rank<r>.json``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch.utils.data import DataLoader, default_collate

sys.path.insert(0, str(Path(__file__).parent))  # tests/zoo.py, tests/dist_job.py

from dist_job import GLOBAL_BATCH, SIZE, SPARSITIES, TRAIN, VAL, RecordingRetrainer, dataset  # noqa: E402
from zoo import build  # noqa: E402

from legodnn import AutoBlockManager, CommonModelManager  # noqa: E402
from legodnn.offline.distributed import init_distributed  # noqa: E402


class DyingCollate:
    """``default_collate``, but rank ``rank`` kills itself (SIGKILL) at its ``batch``-th call."""

    def __init__(self, rank: int, batch: int) -> None:
        self.rank, self.batch, self.calls = rank, batch, 0

    def __call__(self, samples: List[Any]) -> Any:
        self.calls += 1
        if int(os.environ.get("RANK", "0")) == self.rank and self.calls == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
        return default_collate(samples)


def run(config: Dict[str, Any]) -> Dict[str, Any]:
    torch.set_num_threads(1)
    if config.get("timeout_s"):
        init_distributed(timeout_s=config["timeout_s"])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    model, mm = build(config.get("model", "functional")), CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    parallel = config.get("parallel", "data")
    # data-parallel: the loader's batch is per rank; descendant-parallel: every rank reads the step's batches
    batch = GLOBAL_BATCH // world if parallel == "data" else GLOBAL_BATCH
    collate = DyingCollate(*config["die"]) if config.get("die") else default_collate
    train = DataLoader(dataset(TRAIN, 0), batch_size=batch, shuffle=bool(config.get("shuffle")), collate_fn=collate)
    val = DataLoader(dataset(VAL, 1), batch_size=GLOBAL_BATCH)
    torch.manual_seed(100 + int(config.get("rank_seed_step", 0)) * rank)
    retrainer = RecordingRetrainer(
        model, bm, mm, config["compressed"], config["target"], 2, train, val, verbose=False,
        composition_epochs=config.get("composition_epochs", 1), checkpoint_steps=config.get("checkpoint_steps"),
        parallel=parallel, sync_batchnorm=bool(config.get("sync_batchnorm")))
    history = retrainer.train_all_blocks()
    result: Dict[str, Any] = {"rank": rank, "world": world, "history": history, "weights": retrainer.weights_digest,
                              "owned": [list(k) for k in retrainer._owned]}
    if retrainer.composition_history is not None:
        result["composition"] = [list(retrainer.composition_history.train), list(retrainer.composition_history.val)]
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run(json.loads(sys.argv[1]))
