"""What composition-aware retraining costs beside the block distillation it follows.

    python bench/bench_stage_cost.py --cache ~/.cache/legodnn/cifar10 --threads 1

Runs, in one process and on the accuracy bench's data (``bench_accuracy.py``: its
teacher, its 20,000 retraining images and its 1,000 held-out images), one epoch of
block distillation (``BlockRetrainer``, composition stage off), then one epoch of the
composition stage on the descendants it wrote (``CompositionRetrainer``, the default
sandwich), ``--repeats`` times in turn. An epoch of either stage does the same work
at every epoch, so the stage ratio of the accuracy bench, ``--composition-epochs``
epochs against ``--block-epochs``, follows from the median epoch times. Measured in
one run, alternating, so both stages see the same machine; run it with nothing else
busy: a loaded machine slows the composition stage (whole-model graphs, four per
step) far more than block distillation (one block's graph at a time).

Writes ``bench/results_stage_cost.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_accuracy as ba  # noqa: E402
import cifar10_jpg  # noqa: E402

from legodnn import AutoBlockManager, BlockRetrainer, CommonModelManager  # noqa: E402
from legodnn.offline import CompositionRetrainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, required=True, help="where the decoded CIFAR-10 arrays are kept")
    p.add_argument("--archive", type=Path, default=cifar10_jpg.DEFAULT_ARCHIVE)
    p.add_argument("--teacher", type=Path, default=Path(__file__).parent / "weights" / "cifar10_resnet18_w16.safetensors")
    p.add_argument("--retrain-images", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=1, help="epochs of each stage, alternating")
    p.add_argument("--block-epochs", type=int, default=8, help="the accuracy bench's block epochs")
    p.add_argument("--composition-epochs", type=int, default=6, help="the accuracy bench's composition epochs")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="the stages in the default layout (the accuracy bench runs them channels_last)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results_stage_cost.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = ba.load_bench_data(args.cache, args.archive, args.teacher, args.retrain_images)
    mm = CommonModelManager()
    bm = AutoBlockManager(ba.SPARSITIES, data.teacher, mm, ba.SIZE, verbose=False)
    block_s, comp_s = [], []
    with tempfile.TemporaryDirectory(prefix="legodnn-stage-cost-") as tmp:
        work = Path(tmp)
        bm.extract_all_blocks(str(work / "compressed"))
        for rep in range(args.repeats):
            block_dir, comp_dir = work / f"block{rep}", work / f"composed{rep}"
            t = time.perf_counter()
            BlockRetrainer(data.teacher, bm, mm, str(work / "compressed"), str(block_dir), 1, data.train_b,
                           data.val_b, verbose=False, composition_epochs=0,
                           channels_last=args.channels_last).train_all_blocks()
            block_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            CompositionRetrainer(data.teacher, bm, mm, str(block_dir), str(comp_dir), 1, data.train_b, data.val_b,
                                 verbose=False, channels_last=args.channels_last).train_all_compositions()
            comp_s.append(time.perf_counter() - t)
            shutil.rmtree(block_dir)
            shutil.rmtree(comp_dir)
            print(f"repeat {rep + 1}: block epoch {block_s[-1]:.0f} s, composition epoch {comp_s[-1]:.0f} s",
                  flush=True)
    block, comp = statistics.median(block_s), statistics.median(comp_s)
    result = {
        "images": len(data.train), "threads": args.threads, "load_average_at_end": os.getloadavg()[0],
        "block_epoch_s": block_s, "composition_epoch_s": comp_s,
        "epoch_ratio": comp / block,
        "stage_ratio": (args.composition_epochs * comp) / (args.block_epochs * block),
        "block_epochs": args.block_epochs, "composition_epochs": args.composition_epochs,
        "channels_last": args.channels_last, "torch": torch.__version__,
    }
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    tmp_out.replace(args.out)
    print(f"one composition epoch = {result['epoch_ratio']:.2f} block epochs; {args.composition_epochs} composition "
          f"epochs cost {result['stage_ratio']:.2f}x the {args.block_epochs} block epochs")


if __name__ == "__main__":
    main()
