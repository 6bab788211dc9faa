"""The fast path on one GPU: retraining and profiling throughput, fp32 against bf16 and channels_last.

    python bench/bench_gpu.py                              # the GPU run: torchvision resnet50 at 224 px
    python bench/bench_gpu.py --device cpu --quick         # a check that the script works (tiny, CPU)

torchvision ``resnet50`` (random weights: speed does not depend on them) at 224 px,
sparsities 0 / 0.3 / 0.6, synthetic images. For each of fp32, bf16, channels_last and
bf16 + channels_last it measures, in images/s:

* **block**: one epoch of block distillation (``BlockRetrainer``, ``composition_epochs=0``),
* **composition**: one epoch of composition-aware retraining (``CompositionRetrainer``),
* **profile**: one pass of ``BlockProfiler`` over the test images (every descendant
  replayed from its block, 4 whole compositions).

Only the work on the images is timed: the epochs' training loops and the profiler's
test pass, CUDA-synchronized at both ends, after a warm-up run of each stage on a few
batches (cuDNN's algorithm search, the allocator, lazy imports). Extraction,
validation, checkpoints and store writing are not in the figures. Then fp32 and bf16
run on the CPU (all its cores) over ``--cpu-images`` images, for the GPU's speed-up
over it. Results go to ``--out`` as JSON, and a table is printed.

``--quick`` swaps in cv_tasks' ``cifar_resnet18`` (base width 8) at 32 px on 64 images:
seconds on a CPU, to check the script before a GPU run. The whole GPU run (extraction
of resnet50 included) is sized to take a few minutes on one recent GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from torch.utils.data import DataLoader, TensorDataset

OPTIONS: Dict[str, Dict[str, Any]] = {
    "fp32": {},
    "bf16": {"amp": "bf16"},
    "channels_last": {"channels_last": True},
    "bf16+channels_last": {"amp": "bf16", "channels_last": True},
}


def _model(quick: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if quick:
        from cv_tasks import get_model

        return get_model("cifar_resnet18", num_classes=10, base_width=8).eval()
    import torchvision

    return torchvision.models.resnet50(weights=None).eval()


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def _data(n: int, size: int, classes: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))


class _Timer:
    """Seconds spent in the wrapped methods (the stages' epochs, the profiler's pass),
    synchronized with the device at both ends."""

    def __init__(self, device: str) -> None:
        self.device, self.seconds = device, 0.0

    def wrap(self, owner: type, name: str) -> Callable[[], None]:
        from legodnn.offline.precision import synchronize

        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                synchronize(self.device)
                self.seconds += time.perf_counter() - start

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)


def _stage_rates(bm: Any, model: torch.nn.Module, work: Path, device: str, options: Dict[str, Any],
                 train: TensorDataset, test: TensorDataset, batch: int, size: int) -> Dict[str, float]:
    """images/s of the block epoch, the composition epoch and the profile pass under ``options``."""
    from legodnn import CommonModelManager
    from legodnn.offline import BlockProfiler, BlockRetrainer, CompositionRetrainer
    from legodnn.offline.block_retrainer import BlockRetrainer as _BR
    from legodnn.offline.composition_retrainer import CompositionStage

    mm = CommonModelManager()
    val = DataLoader(TensorDataset(*(t[:batch] for t in train.tensors)), batch_size=batch)
    tag = "-".join(f"{k}{v}" for k, v in options.items()) or "fp32"
    common = dict(verbose=False, checkpoint_seconds=None, overwrite=True, **options)
    rates: Dict[str, float] = {}
    for stage in ("block", "composition", "profile"):
        for warm in (True, False):  # a warm-up on two batches, then the measured run
            data = TensorDataset(*(t[:2 * batch] for t in train.tensors)) if warm else train
            loader = DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
            timer = _Timer(device)
            out = Path(tempfile.mkdtemp(prefix=f"{tag}-{stage}-", dir=work))  # a new folder: nothing to resume
            if stage == "block":
                undo = timer.wrap(_BR, "_epoch")
                try:
                    BlockRetrainer(model, bm, mm, str(work / "blocks"), str(out), 1, loader, val, device,
                                   composition_epochs=0, **common).train_all_blocks()
                finally:
                    undo()
                images = len(data)
            elif stage == "composition":
                undo = timer.wrap(CompositionStage, "_epoch")
                try:
                    CompositionRetrainer(model, bm, mm, str(work / "blocks"), str(out), 1, loader, val, device,
                                         **common).train_all_compositions()
                finally:
                    undo()
                images = len(data)
            else:
                pdata = TensorDataset(*(t[:2 * batch] for t in test.tensors)) if warm else test
                undo = timer.wrap(BlockProfiler, "_score")
                try:
                    BlockProfiler(model, bm, mm, str(work / "blocks"), DataLoader(pdata, batch_size=batch),
                                  (1, 3, size, size), device, verbose=False, **options
                                  ).profile_all_blocks(num_compositions=4)
                finally:
                    undo()
                images = len(pdata)
            if not warm:
                assert timer.seconds > 0, f"{stage}: nothing was timed"
                rates[stage] = images / timer.seconds
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="cifar_resnet18 width 8 at 32 px on 64 images: a check")
    parser.add_argument("--images", type=int, default=None, help="training and test images (default 1024; quick 64)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 64; quick 16)")
    parser.add_argument("--cpu-images", type=int, default=None,
                        help="images for the CPU comparison (default 64, or 0 when --device is cpu)")
    parser.add_argument("--out", default=None, help="JSON results (default bench/results_gpu.json; quick: none)")
    args = parser.parse_args()
    from legodnn import AutoBlockManager, CommonModelManager
    from legodnn.validation import check_device

    device = check_device("--device", args.device)
    size, classes = (32, 10) if args.quick else (224, 1000)
    n = args.images or (64 if args.quick else 1024)
    batch = args.batch or (16 if args.quick else 64)
    cpu_images = args.cpu_images if args.cpu_images is not None else (0 if device == "cpu" else 64)
    train, test = _data(n, size, classes, 0), _data(n, size, classes, 1)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    results: Dict[str, Any] = {
        "model": "cifar_resnet18 width 8" if args.quick else "torchvision resnet50", "input": size, "images": n,
        "batch": batch, "sparsities": [0.0, 0.3, 0.6], "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name(),
        "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "rates": {}, "cpu_rates": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = _model(args.quick)
        start = time.perf_counter()
        bm = AutoBlockManager([0.0, 0.3, 0.6], model, CommonModelManager(), (1, 3, size, size), verbose=False)
        bm.extract_all_blocks(str(work / "blocks"))
        results["extract_s"] = time.perf_counter() - start
        print(f"{results['model']}: {len(bm.block_names)} blocks extracted in {results['extract_s']:.0f} s")
        for name, options in OPTIONS.items():
            if options.get("amp") == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
                continue
            results["rates"][name] = _stage_rates(bm, model.to(device), work, device, options, train, test, batch, size)
            print(name, {k: round(v, 1) for k, v in results["rates"][name].items()}, flush=True)
        if cpu_images:
            small = [TensorDataset(*(t[:cpu_images] for t in d.tensors)) for d in (train, test)]
            for name in ("fp32", "bf16"):
                results["cpu_rates"][name] = _stage_rates(bm, model.to("cpu"), work, "cpu", OPTIONS[name], *small,
                                                          min(batch, 16), size)
                print("cpu", name, {k: round(v, 2) for k, v in results["cpu_rates"][name].items()}, flush=True)
    base = results["rates"]["fp32"]
    print(f"\n{results['model']} at {size} px, {n} images, batch {batch}, {results['device_name']}")
    print(f"{'options':20s} {'block im/s':>11s} {'composition':>12s} {'profile':>9s}   speed-up over fp32")
    for name, r in results["rates"].items():
        ups = " / ".join(f"{r[k] / base[k]:.2f}x" for k in ("block", "composition", "profile"))
        print(f"{name:20s} {r['block']:11.1f} {r['composition']:12.1f} {r['profile']:9.1f}   {ups}")
    for name, r in results["cpu_rates"].items():
        best = max(results["rates"].values(), key=lambda x: x["block"])
        ups = " / ".join(f"{best[k] / r[k]:.0f}x" for k in ("block", "composition", "profile"))
        print(f"{'cpu ' + name:20s} {r['block']:11.2f} {r['composition']:12.2f} {r['profile']:9.2f}   "
              f"fastest GPU option over it: {ups}")
    out = args.out or (None if args.quick else str(Path(__file__).with_name("results_gpu.json")))
    if out:
        Path(out).write_text(json.dumps(results, indent=1))
        print(f"results: {out}")


if __name__ == "__main__":
    main()
