"""ONNX Runtime serving: segmented chains, hot-swap, the ONNX folder and int8 descendants."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from legodnn import AutoBlockManager  # noqa: E402
from legodnn.blockmanager.switcher import BlockSwitcher  # noqa: E402
from legodnn.errors import CorruptedStoreError, LegoDNNError, NotOursError, StaleProfileError  # noqa: E402
from legodnn.online.onnx_export import OnnxRunner, export_onnx  # noqa: E402
from legodnn.onnxrt import OnnxStore, OrtBlockSwitcher, export_onnx_store  # noqa: E402

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.5]
# float32 chains: ORT fuses differently per session, so sums round differently (measured ~1e-6)
FLOAT_ATOL = 1e-4
# int8 (QDQ, per-channel weights) against float, relative to the output's largest magnitude
INT8_REL = 0.15


def _model() -> torch.nn.Module:
    from cv_tasks import get_model

    torch.manual_seed(0)
    model = get_model("cifar_resnet18", num_classes=10, base_width=8).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong graph shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ort")
    model = _model()
    bm = AutoBlockManager(SPARSITIES, model, None, SIZE, verbose=False)
    bm.extract_all_blocks(str(root / "store"))
    g = torch.Generator().manual_seed(2)
    calib = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
    onnx_store = export_onnx_store(root / "store", model, calibration=calib, verbose=False)
    return root / "store", model, onnx_store


def _configs(n_blocks: int):
    a = [0.0] * n_blocks
    b = [0.5 if i % 2 == 0 else 0.0 for i in range(n_blocks)]
    c = [0.5] * n_blocks
    return a, b, c


def test_folder_layout_and_plan(exported) -> None:
    store, _, onnx_store = exported
    m = onnx_store.manifest
    assert onnx_store.root == store / "onnx" and m.precisions == ("float", "int8")
    blocks = [s.name for s in m.plan.block_steps]
    assert len(blocks) == 8
    for name in blocks:
        for s in SPARSITIES:
            f, q = m.find(name, s, "float"), m.find(name, s, "int8")
            assert f is not None and q is not None and (store / "onnx" / f.file).is_file()
            assert q.bytes < f.bytes  # int8 weights: about a quarter, plus scales and int32 biases
    # a residual branch reads a block's input after the block: segments take several values
    assert any(len(s.inputs) > 1 for s in m.plan.steps if s.kind == "segment")
    assert m.calibration["format"] == "QDQ" and m.calibration["samples"] == 16


def test_chain_equals_one_session_and_pytorch(exported) -> None:
    store, model, _ = exported
    ort_sw = OrtBlockSwitcher.from_store(store, fuse=False)  # the chain of sessions
    torch_sw = BlockSwitcher(str(store), model)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for config in _configs(len(ort_sw.block_names)):
        ort_sw.switch(config)
        torch_sw.switch(config)
        with torch.no_grad():
            eager = torch_sw.model(x)
        one_session = OnnxRunner(export_onnx(torch_sw.model, SIZE))(x)
        chained = ort_sw.model(x)
        assert chained.shape == eager.shape == (3, 10)
        assert torch.allclose(chained, one_session, atol=FLOAT_ATOL, rtol=0)
        assert torch.allclose(chained, eager, atol=FLOAT_ATOL, rtol=0)
        # a second batch size gets its own buffers; the first still works
        assert torch.allclose(ort_sw.model(x[:1]), chained[:1], atol=FLOAT_ATOL, rtol=0)
        assert torch.allclose(ort_sw.model(x), chained, atol=0, rtol=0)
        assert not ort_sw.is_fused and not ort_sw.wait_fused(0.1)
        # the fused session of the configuration, built from the chain's ONNX files, equals them too
        fused = ort_sw.fused_session()
        out = fused.session.run(None, {"v0": x.numpy()})[0]
        assert torch.allclose(torch.from_numpy(out), one_session, atol=FLOAT_ATOL, rtol=0)


def test_int8_composes_with_float_and_stays_close(exported) -> None:
    store, model, _ = exported
    sw = OrtBlockSwitcher.from_store(store)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    n = len(sw.block_names)
    mixed = ["int8" if i % 2 else "float" for i in range(n)]
    for sparsities in _configs(n):
        sw.switch(sparsities, "float")
        ref = sw.model(x)
        for precisions in (mixed, "int8"):
            r = sw.switch(sparsities, precisions)
            assert r.precisions == tuple(mixed if precisions == mixed else ["int8"] * n)
            out = sw.model(x)
            err = (out - ref).abs().max() / ref.abs().max()
            assert 0 < err < INT8_REL, (sparsities, precisions, float(err))


def test_swap_loads_only_changed_blocks_and_caches(exported) -> None:
    store, _, _ = exported
    sw = OrtBlockSwitcher.from_store(store)
    n = len(sw.block_names)
    r = sw.switch({"block_3": 0.5})
    assert r.changed == ("block_3",) and r.from_disk == ("block_3",) and r.bytes_loaded > 0
    assert sw.sparsities == [0.5 if i == 3 else 0.0 for i in range(n)]
    r = sw.switch([0.0] * n)
    assert r.changed == ("block_3",) and r.from_disk == ()  # the teacher block's session stayed cached
    r = sw.switch({"block_3": 0.5})
    assert r.from_disk == () and r.bytes_loaded == 0
    assert sw.switch({"block_3": 0.5}).changed == ()
    sw.preload()
    assert sw.switch([0.5] * n, "int8").from_disk == ()


def test_concurrent_inference_sees_whole_configurations(exported) -> None:
    store, _, _ = exported
    sw = OrtBlockSwitcher.from_store(store)  # fuses in the background while the swaps go on
    chain = OrtBlockSwitcher.from_store(store, fuse=False)
    n = len(sw.block_names)
    configs = [([0.0] * n, "float"), ([0.5] * n, "int8"), (_configs(n)[1], "float")]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    per_config = []  # each configuration's output through the chain and through its fused session
    for s, p in configs:
        sw.switch(s, p)
        chain.switch(s, p)
        assert sw.wait_fused(60)
        per_config.append((chain.model(x), sw.model(x)))
    assert all((per_config[i][0] - per_config[j][0]).abs().max() > 1e-3 for i in range(3) for j in range(i))
    refs = [r for pair in per_config for r in pair]
    outputs, errors = [], []
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set() or len(outputs) < 40:
                outputs.append(sw.model(x))
        except Exception as exc:  # surfaced below
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(60):
        sw.switch(*configs[i % 3])
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    for out in outputs:  # every output is exactly one configuration's (chained or fused), never a mix
        assert min(float((out - r).abs().max()) for r in refs) == 0.0


def test_store_without_onnx_folder_still_loads(exported, tmp_path: Path) -> None:
    import shutil

    store, model, _ = exported
    bare = tmp_path / "bare"
    shutil.copytree(store, bare, ignore=shutil.ignore_patterns("onnx"))
    torch_sw = BlockSwitcher(str(bare), model)  # the PyTorch path does not look for ONNX files
    assert OnnxStore.for_store(torch_sw.store) is None
    with pytest.raises(LegoDNNError, match="has no ONNX folder"):
        OrtBlockSwitcher.from_store(bare)
    sw = OrtBlockSwitcher.from_store(bare, model, fuse=False)  # float sessions exported in memory
    x = torch.randn(2, 3, 32, 32)
    for config in _configs(len(sw.block_names))[1:2]:  # teacher and pruned blocks
        sw.switch(config)
        torch_sw.switch(config)
        with torch.no_grad():
            assert torch.allclose(sw.model(x), torch_sw.model(x), atol=FLOAT_ATOL, rtol=0)
    with pytest.raises(LegoDNNError, match="holds \\['float'\\] only"):
        sw.switch([0.0] * len(sw.block_names), "int8")


def test_bad_switch_arguments(exported) -> None:
    store, _, _ = exported
    sw = OrtBlockSwitcher.from_store(store)
    n = len(sw.block_names)
    with pytest.raises(LegoDNNError, match="sparsity 0.3 is not in the store"):
        sw.switch([0.3] * n)
    with pytest.raises(LegoDNNError, match="must be one of"):
        sw.switch([0.0] * n, "fp16")
    with pytest.raises(LegoDNNError, match="unknown block names"):
        sw.switch({"nope": 0.5})
    with pytest.raises(LegoDNNError, match="got 2 sparsities"):
        sw.switch([0.0, 0.5])
    with pytest.raises(TypeError, match="must be a number"):
        sw.switch({"block_0": "0.5"})
    assert sw.sparsities == [0.0] * n  # nothing changed


def test_corrupt_stale_and_foreign_folders(exported, tmp_path: Path) -> None:
    store, model, onnx_store = exported
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(store, copy)
    ref = onnx_store.manifest.find("block_2", 0.5, "int8")
    (copy / "onnx" / ref.file).write_bytes(b"garbage")
    sw = OrtBlockSwitcher.from_store(copy)
    with pytest.raises(CorruptedStoreError, match="does not match the hash"):
        sw.switch({"block_2": 0.5}, "int8")
    # an export made from other weights is stale for this store
    other = tmp_path / "other"
    perturbed = _model()
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.01)
    AutoBlockManager(SPARSITIES, perturbed, None, SIZE, verbose=False).extract_all_blocks(str(other))
    with pytest.raises(StaleProfileError, match="exported from other weights"):
        OrtBlockSwitcher.from_store(other, onnx_dir=copy / "onnx")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(NotOursError, match="did not write"):
        export_onnx_store(store, model, onnx_dir=foreign, verbose=False)
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


def test_float_only_export_and_rewrite_of_own_folder(exported, tmp_path: Path) -> None:
    from legodnn.onnxrt.onnx_store import OnnxStoreWriter

    store, model, _ = exported
    out = tmp_path / "float_only"
    first = export_onnx_store(store, model, onnx_dir=out, verbose=False)
    assert first.manifest.precisions == ("float",) and not first.descendants("int8")
    writer = OnnxStoreWriter(out)  # a folder legodnn wrote may be replaced
    writer.abort()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    sw = OrtBlockSwitcher.from_store(store, onnx_dir=out)
    assert sw.precisions == ("float",)


@pytest.mark.slow
def test_onnxruntime_stays_optional() -> None:
    code = ("import sys, legodnn, legodnn.onnxrt, legodnn.online.runtime; "
            "assert 'onnxruntime' not in sys.modules and 'onnx' not in sys.modules, 'imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""},
                   cwd=Path(__file__).resolve().parents[1])


def test_missing_onnxruntime_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from legodnn.onnxrt._ort import require_ort

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(LegoDNNError, match=r"pip install 'legodnn\[onnx\]'"):
        require_ort()


def test_buffers_are_reused(exported) -> None:
    store, _, _ = exported
    sw = OrtBlockSwitcher.from_store(store)
    assert sw.wait_fused(60)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    a = sw.model(x)
    (buffers,) = sw._pool[(2, 3, 32, 32)]
    b = sw.model(torch.from_numpy(x))
    assert sw._pool[(2, 3, 32, 32)] == [buffers] and torch.equal(a, b)


def test_fusion_serves_one_session_per_configuration(exported, monkeypatch: pytest.MonkeyPatch) -> None:
    import legodnn.onnxrt.serving as serving

    store, _, _ = exported
    sw = OrtBlockSwitcher.from_store(store)
    chain = OrtBlockSwitcher.from_store(store, fuse=False)
    n = len(sw.block_names)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    mixed = ["int8" if i % 2 else "float" for i in range(n)]
    for sparsities, precisions in ((_configs(n)[1], mixed), ([0.5] * n, "float")):
        sw.switch(sparsities, precisions)
        chain.switch(sparsities, precisions)
        assert sw.wait_fused(60) and sw.is_fused and sw._config.fused.nbytes > 0
        # int8 QDQ pairs between two int8 blocks may fold inside one graph: within the int8 tolerance
        tol = FLOAT_ATOL if precisions == "float" else INT8_REL * float(chain.model(x).abs().max())
        assert torch.allclose(sw.model(x), chain.model(x), atol=tol, rtol=0)
    # swapping back to a configuration fused before is fused at once (its session is cached)
    sw.switch(_configs(n)[1], mixed)
    assert sw.is_fused and sw.sparsities == _configs(n)[1] and sw.live_precisions == mixed
    # a swap installs the chain first (one assignment), the fused session follows
    r = sw.switch([0.0] * n, "int8")
    assert r.changed and sw.wait_fused(60)
    assert not chain.is_fused
    sw.close()
    sw._worker.join(10)
    assert not sw._worker.is_alive()
    # a model that cannot be fused keeps serving its chain, with one warning that says why
    def refuse(*_args, **_kwargs):
        raise LegoDNNError("cannot fuse this one")

    monkeypatch.setattr(serving, "fuse_steps", refuse)
    with pytest.warns(UserWarning, match="cannot fuse"):
        broken = OrtBlockSwitcher.from_store(store)
        assert not broken.wait_fused(60)
    assert "cannot fuse this one" in broken.fuse_error and not broken.is_fused
    broken.switch([0.5] * n)
    assert not broken.wait_fused(1) and torch.allclose(broken.model(x), chain.model(x), atol=FLOAT_ATOL, rtol=0)
    with pytest.raises(TypeError, match="fuse must be True or False"):
        OrtBlockSwitcher.from_store(store, fuse="yes")
