"""Retraining on this CPU: 1 against 2 processes of one thread each, data- and descendant-parallel.

    python bench/bench_distributed.py [--images 512] [--batch 32] [--width 16] [--out distributed.json]

A CIFAR-size ResNet-18 (``cifar_resnet18``, base width ``--width``) at 32 px, sparsities
0 / 0.3 / 0.6 / 0.8, synthetic images. Each run retrains for one block epoch
(``BlockRetrainer``, ``composition_epochs=0``) and one composition epoch
(``CompositionRetrainer``) over ``--images`` images with ``--batch`` images per
optimizer step in all (one process: batches of 32; two: 16 on each), held-out loss on
64 more, default checkpoint options. Prints, per stage, images/s and the speed-up of
two processes; the times are rank 0's, from a barrier before the stage to its end
(stores written), after a warm-up of what a process imports on first use.

It also prints the CPU seconds the processes used in all, and their ratio: on a
machine other jobs share, the wall-clock speed-up shows how many cores were free,
while the work-split efficiency (CPU seconds of one process over those of two) shows
what data parallelism itself costs (smaller batches per process, the all-reduces);
two free cores give at most 2 x efficiency. Time and CPU inside the collectives are
printed too.

A third run retrains the block stage descendant-parallel on two processes
(``BlockRetrainer(..., parallel="descendants")``): each process reads every batch of
``--batch`` images and runs the teacher on it, and trains half of the descendants (by
FLOPs). Its row sits beside the block stage's data-parallel one: the same images and
samples per step, the work split the other way (the teacher forward replicated instead
of the batch halved; no gradient all-reduce, one gather of the weights per checkpoint).

The ranks are started as ``torchrun`` would (its environment variables), by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import torch
from torch.utils.data import DataLoader, TensorDataset

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.3, 0.6, 0.8]
HELD_OUT = 64


def _model(width: int) -> torch.nn.Module:
    from cv_tasks import get_model

    torch.manual_seed(0)
    return get_model("cifar_resnet18", num_classes=10, base_width=width).eval()


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


class _Collectives:
    """Wall and CPU seconds spent inside torch.distributed's collectives (patched in place).

    The wall time includes waiting for the slower rank; the CPU time is what the
    communication itself costs this process.
    """

    NAMES = ("all_reduce", "barrier", "broadcast_object_list", "all_gather_object", "gather_object")

    def __init__(self) -> None:
        import torch.distributed as dist

        self.wall = self.cpu = 0.0
        self.calls = 0
        for name in self.NAMES:
            setattr(dist, name, self._timed(getattr(dist, name)))

    def _timed(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - wall
                self.cpu += time.process_time() - cpu
                self.calls += 1

        return timed

    def take(self) -> Dict[str, float]:
        out = {"collective_s": self.wall, "collective_cpu_s": self.cpu, "collectives": self.calls}
        self.wall = self.cpu = 0.0
        self.calls = 0
        return out


def worker(args: argparse.Namespace) -> None:
    """One rank: both stages, timed from a barrier (``--parallel descendants``: the block stage
    alone, every rank reading whole batches)."""
    from legodnn import AutoBlockManager, CommonModelManager
    from legodnn.offline import BlockRetrainer, CompositionRetrainer
    from legodnn.offline.distributed import current_ranks

    torch.set_num_threads(1)
    ranks = current_ranks()
    model, mm = _model(args.width), CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    root = Path(args.root)
    by_descendants = args.parallel == "descendants"
    per_rank = args.batch if by_descendants else args.batch // ranks.world_size
    train = DataLoader(_data(args.images, 0), batch_size=per_rank, shuffle=True)
    val = DataLoader(_data(HELD_OUT, 1), batch_size=HELD_OUT)
    # the first optimizer a process builds imports torch._dynamo (~2.5 s here): a start-up cost, not training
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    times: Dict[str, float] = {}
    collectives = _Collectives()
    ranks.barrier("starting")
    collectives.take()
    start, cpu = time.perf_counter(), time.process_time()
    name = f"block{ranks.world_size}{'-descendants' if by_descendants else ''}"
    BlockRetrainer(model, bm, mm, str(root / "compressed"), str(root / name), 1, train, val,
                   verbose=False, composition_epochs=0, parallel=args.parallel).train_all_blocks()
    times["block"], times["block_cpu"] = time.perf_counter() - start, time.process_time() - cpu
    times.update({f"block_{k}": v for k, v in collectives.take().items()})
    if by_descendants:
        (root / f"times{ranks.world_size}d-{ranks.rank}.json").write_text(json.dumps(times))
        return
    ranks.barrier("starting the composition stage")
    collectives.take()
    start, cpu = time.perf_counter(), time.process_time()
    CompositionRetrainer(model, bm, mm, str(root / f"block{ranks.world_size}"), str(root / f"comp{ranks.world_size}"),
                         1, train, val, verbose=False).train_all_compositions()
    times["composition"], times["composition_cpu"] = time.perf_counter() - start, time.process_time() - cpu
    times.update({f"composition_{k}": v for k, v in collectives.take().items()})
    (root / f"times{ranks.world_size}-{ranks.rank}.json").write_text(json.dumps(times))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, args: argparse.Namespace, root: Path, parallel: str = "data") -> Dict[str, Any]:
    command = [sys.executable, __file__, "--worker", "--root", str(root), "--images", str(args.images),
               "--batch", str(args.batch), "--width", str(args.width), "--parallel", parallel]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if world > 1:
        port = str(_free_port())
        env.update(WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    procs = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)} if world > 1 else env)
             for r in range(world)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{world} process(es): exit codes {codes}")
    tag = "d" if parallel == "descendants" else ""
    ranks = [json.loads((root / f"times{world}{tag}-{r}.json").read_text()) for r in range(world)]
    times: Dict[str, Any] = dict(ranks[0])
    for stage in ("block",) if parallel == "descendants" else ("block", "composition"):
        times[f"{stage}_cpu"] = sum(r[f"{stage}_cpu"] for r in ranks)  # over every process
        times[f"{stage}_collective_cpu_s"] = sum(r[f"{stage}_collective_cpu_s"] for r in ranks)
        times[f"{stage}_collective_s"] = [r[f"{stage}_collective_s"] for r in ranks]  # per rank
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="training images per epoch")
    parser.add_argument("--batch", type=int, default=32, help="images per optimizer step, over all processes")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 base width (64 is the usual)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parallel", default="data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.batch % 2:
        parser.error("--batch must be even (it is split between two processes)")
    from legodnn import AutoBlockManager, CommonModelManager

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, mm = _model(args.width), CommonModelManager()
        AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False).extract_all_blocks(str(root / "compressed"))
        runs = {world: _run(world, args, root) for world in (1, 2)}
        by_descendants = _run(2, args, root, "descendants")
    result: Dict[str, Any] = {"model": f"cifar_resnet18 base width {args.width}, 32 px", "images": args.images,
                              "batch": args.batch, "sparsities": SPARSITIES, "threads_per_process": 1,
                              "cpus": os.cpu_count(), "load_average_before": load_before,
                              "load_average_after": os.getloadavg()[0], "stages": {}}
    print(f"{result['model']}, {args.images} images, {args.batch} per step, one thread per process; "
          f"load average {load_before:.1f} before, {result['load_average_after']:.1f} after on {os.cpu_count()} CPUs")
    print(f"{'stage':<12} {'1 process':>12} {'2 processes':>12} {'speed-up':>9} {'CPU s, 1 / 2 processes':>24} "
          f"{'efficiency':>10}")
    for stage in ("block", "composition"):
        rate = {w: args.images / runs[w][stage] for w in runs}
        cpu = {w: runs[w][f"{stage}_cpu"] for w in runs}
        result["stages"][stage] = {"seconds": {w: runs[w][stage] for w in runs}, "images_per_s": rate,
                                   "speedup": rate[2] / rate[1], "cpu_seconds_all_processes": cpu,
                                   "work_split_efficiency": cpu[1] / cpu[2],
                                   "two_processes_in_collectives": {
                                       "calls_per_rank": runs[2][f"{stage}_collectives"],
                                       "wall_s_per_rank": runs[2][f"{stage}_collective_s"],
                                       "cpu_s_all_ranks": runs[2][f"{stage}_collective_cpu_s"]}}
        print(f"{stage:<12} {rate[1]:>8.1f} im/s {rate[2]:>8.1f} im/s {rate[2] / rate[1]:>8.2f}x "
              f"{cpu[1]:>15.1f} / {cpu[2]:<6.1f} {cpu[1] / cpu[2]:>10.2f}")
    rate = {1: args.images / runs[1]["block"], 2: args.images / by_descendants["block"]}
    cpu = {1: runs[1]["block_cpu"], 2: by_descendants["block_cpu"]}
    result["stages"]["block_descendant_parallel"] = {
        "seconds": {1: runs[1]["block"], 2: by_descendants["block"]}, "images_per_s": rate,
        "speedup": rate[2] / rate[1], "speedup_over_data_parallel": runs[2]["block"] / by_descendants["block"],
        "cpu_seconds_all_processes": cpu, "work_split_efficiency": cpu[1] / cpu[2],
        "two_processes_in_collectives": {"calls_per_rank": by_descendants["block_collectives"],
                                         "wall_s_per_rank": by_descendants["block_collective_s"],
                                         "cpu_s_all_ranks": by_descendants["block_collective_cpu_s"]}}
    print(f"{'block, desc.':<12} {rate[1]:>8.1f} im/s {rate[2]:>8.1f} im/s {rate[2] / rate[1]:>8.2f}x "
          f"{cpu[1]:>15.1f} / {cpu[2]:<6.1f} {cpu[1] / cpu[2]:>10.2f}")
    print(f"block stage on 2 processes: descendant-parallel {runs[2]['block'] / by_descendants['block']:.2f}x the "
          f"throughput of data-parallel")
    for stage in ("block", "composition", "block_descendant_parallel"):
        c = result["stages"][stage]["two_processes_in_collectives"]
        print(f"{stage.replace('_', ' ')}, 2 processes: {c['calls_per_rank']} collectives per rank, in them "
              f"{' / '.join(f'{s:.2f}' for s in c['wall_s_per_rank'])} s wall (ranks 0 / 1, waiting for the other "
              f"included), {c['cpu_s_all_ranks']:.2f} CPU s in all")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
