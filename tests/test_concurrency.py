"""BlockSwitcher under threads: inference during switches sees whole configurations only,
and each concurrent switch reports its own result.

A switch builds a new body sharing the unchanged modules and installs it with one
attribute assignment; ``LegoModel.forward`` reads that attribute once. A forward that
ran on some blocks of the old configuration and some of the new one would give an
output none of the configurations gives, so every output any thread sees is compared,
bit for bit, with the outputs of the configurations precomputed alone.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from zoo import build

from legodnn import AutoBlockManager, BlockSwitcher, CommonModelManager

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.4, 0.8]
SWITCHES = 1000


@pytest.fixture(scope="module")
def switcher(tmp_path_factory: pytest.TempPathFactory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one kernel path: a forward gives the same bits in any thread
    root: Path = tmp_path_factory.mktemp("concurrency")
    model = build("functional")
    AutoBlockManager(SPARSITIES, model, CommonModelManager(), SIZE, verbose=False).extract_all_blocks(str(root))
    sw = BlockSwitcher(str(root), build("functional", seed=5))
    sw.preload()  # switches then only swap modules: many switches per second, the best chance of a race
    yield sw
    torch.set_num_threads(threads)


def _configs(n_blocks: int) -> List[Tuple[float, ...]]:
    """Every level, and mixtures in which each block differs from the level configurations."""
    levels = [(s,) * n_blocks for s in SPARSITIES]
    mixed = [tuple(SPARSITIES[(i + k) % len(SPARSITIES)] for i in range(n_blocks)) for k in (1, 2)]
    return levels + mixed


def test_inference_during_switches_sees_whole_configurations(switcher: BlockSwitcher) -> None:
    configs = _configs(len(switcher.block_names))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = []
    with torch.no_grad():
        for config in configs:
            switcher.switch(list(config))
            expected.append(switcher.model(x))
    # a mix of two configurations must be detectable: every configuration gives its own output
    assert all(not torch.equal(a, b) for i, a in enumerate(expected) for b in expected[i + 1:])

    stop = threading.Event()
    seen = [[0] * len(configs) for _ in range(4)]
    mixed: List[torch.Tensor] = []
    errors: List[BaseException] = []

    def infer(counts: List[int]) -> None:
        try:
            with torch.no_grad():
                while not stop.is_set():
                    out = switcher.model(x)
                    match = [i for i, e in enumerate(expected) if torch.equal(out, e)]
                    if match:
                        counts[match[0]] += 1
                    else:
                        mixed.append(out)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=infer, args=(counts,), daemon=True) for counts in seen]
    for w in workers:
        w.start()
    rng = random.Random(0)
    try:
        for _ in range(SWITCHES):
            config = rng.choice(configs)
            assert switcher.switch(list(config)).sparsities == config
            time.sleep(0.001)  # let the inference threads run between switches
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    assert not errors, errors[0]
    assert not mixed, f"{len(mixed)} outputs matched no configuration"
    total = sum(map(sum, seen))
    assert all(sum(counts) > 0 for counts in seen), seen
    assert sum(1 for i in range(len(configs)) if any(c[i] for c in seen)) >= 2, seen  # they saw switches happen
    assert not any(w.is_alive() for w in workers) and total > 0  # no deadlock: every worker ended


def test_concurrent_switches_each_report_their_own(switcher: BlockSwitcher) -> None:
    """Two threads switch whole configurations, a third one block at a time (a dict): each
    result must show what its own request asked for, never another thread's."""
    names = switcher.block_names
    configs = _configs(len(names))
    wrong: List[str] = []
    errors: List[BaseException] = []
    barrier = threading.Barrier(3)

    def whole(seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(SWITCHES):
                config = rng.choice(configs)
                result = switcher.switch(list(config))
                if result.sparsities != config:
                    wrong.append(f"asked {config}, result says {result.sparsities}")
        except BaseException as exc:
            errors.append(exc)

    def partial(seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(SWITCHES):
                i, s = rng.randrange(len(names)), rng.choice(SPARSITIES)
                result = switcher.switch({names[i]: s})
                if result.sparsities[i] != s or any(n != names[i] for n in result.changed):
                    wrong.append(f"asked {names[i]}={s}, result says {result}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=whole, args=(1,)), threading.Thread(target=whole, args=(2,)),
               threading.Thread(target=partial, args=(3,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert not wrong, f"{len(wrong)} of {3 * SWITCHES} results describe another switch, e.g. {wrong[:3]}"
