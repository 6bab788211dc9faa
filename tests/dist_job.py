"""One rank of the distributed tests (tests/test_distributed.py): retrain, then profile.

Every rank runs it as a script (``python dist_job.py CONFIG_JSON``, under torchrun or
the test's own launcher); the test also calls :func:`run` in its own process for the
one-process reference, so both go through the same lines. Each rank writes what it
got (history, profile, a digest of the weights it hands to the store writer) to
``<out>/rank<r>.json``, so the test can compare the ranks with each other.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))  # tests/zoo.py

from zoo import build  # noqa: E402

from legodnn import AutoBlockManager, CommonModelManager  # noqa: E402
from legodnn.offline import BlockProfiler, BlockRetrainer  # noqa: E402
from legodnn.offline.distributed import init_distributed  # noqa: E402

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.4, 0.8]
GLOBAL_BATCH = 16  # samples per optimizer step, whatever the number of ranks
TRAIN, VAL, TEST = 64, 16, 40  # test: 20 per rank of 2, batches of 8, 8 and 4


def dataset(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def digest(weights: Dict[Any, Dict[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for key in sorted(weights):
        for name in sorted(weights[key]):
            h.update(f"{key}/{name}".encode())
            h.update(weights[key][name].contiguous().numpy().tobytes())
    return h.hexdigest()


class RecordingRetrainer(BlockRetrainer):
    """Remembers a digest of the weights it hands to the store writer (on every rank)."""

    def _write_store(self, best: Any, state: Any, extra: Any) -> None:
        self.weights_digest = digest(best)
        super()._write_store(best, state, extra)


def dying_on(rank: int, call: int, how: str = "SIGKILL") -> Any:
    """MSE, but rank ``rank`` sends itself ``how`` (SIGKILL: dies; SIGSTOP: hangs) at its
    loss call number ``call``."""
    count = {"n": 0}

    @functools.wraps(F.mse_loss)  # the same loss name in the manifest
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        count["n"] += 1
        if int(os.environ.get("RANK", "0")) == rank and count["n"] == call:
            os.kill(os.getpid(), getattr(signal, how))
        return F.mse_loss(out, target)

    return loss


def run(config: Dict[str, Any]) -> Dict[str, Any]:
    torch.set_num_threads(1)
    if config.get("timeout_s"):  # else legodnn creates the group itself, under torchrun
        init_distributed(timeout_s=config["timeout_s"])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    model, mm = build("functional"), CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    result: Dict[str, Any] = {"rank": rank, "world": world}
    if config.get("target"):
        loss = dying_on(*config["die"]) if config.get("die") else F.mse_loss
        retrainer = RecordingRetrainer(
            model, bm, mm, config["compressed"], config["target"], 2,
            DataLoader(dataset(TRAIN, 0), batch_size=GLOBAL_BATCH // world),
            DataLoader(dataset(VAL, 1), batch_size=GLOBAL_BATCH), verbose=False, composition_epochs=1,
            loss_fn=loss, checkpoint_steps=config.get("checkpoint_steps"))
        result["history"] = retrainer.train_all_blocks()
        result["composition"] = [list(retrainer.composition_history.train), list(retrainer.composition_history.val)]
        result["weights"] = retrainer.weights_digest
    if config.get("profile"):
        profiler = BlockProfiler(model, bm, mm, config["profile"], DataLoader(dataset(TEST, 2), batch_size=8), SIZE,
                                 verbose=False)
        result["profile"] = profiler.profile_all_blocks(num_compositions=4).to_json()
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # "resuming ... after epoch 1 and 3 steps"
    run(json.loads(sys.argv[1]))
