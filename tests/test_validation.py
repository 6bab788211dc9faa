"""Every bad input at the public boundary is a clear legodnn error (issue 13).

A table of bad inputs, one row each, asserts the error's type and the words of its
message; property-based tests generate numbers, strings, bools and None for numeric
arguments and check that every bad value is refused naming the argument and that no
good value is. All of it runs on one tiny classifier (about five seconds).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from legodnn import (
    AutoBlockManager,
    BlockProfiler,
    BlockRetrainer,
    BlockSwitcher,
    Budget,
    CommonModelManager,
    LatencyEstimator,
    LatencyProfile,
    LegoDNNError,
    ModelProfile,
    OnDeviceRuntime,
    ScalingOptimizer,
)
from legodnn.errors import (
    ArgumentTypeError,
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidDataError,
    InvalidProfileError,
    InvalidSparsityError,
)
from legodnn.online.latency import MIN_SCALE, _choose_calibration, _fit
from legodnn.online.runtime import memory_budget_source
from legodnn.validation import check_float, check_int

SIZE = (1, 3, 16, 16)
SPARSITIES = [0.0, 0.5]
CLASSES = 4


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES),
    )


def batches(n: int = 2, channels: int = 3, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, channels, 16, 16, generator=g), torch.randint(0, CLASSES, (8,), generator=g))
            for _ in range(n)]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A block manager, a store profiled for accuracy and latency, and an optimizer on it."""
    root = tmp_path_factory.mktemp("validation")
    mm = CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, tiny(), mm, SIZE, verbose=False)
    store = root / "store"
    bm.extract_all_blocks(str(store))
    BlockProfiler(tiny(), bm, mm, str(store), batches(), SIZE, verbose=False).profile_all_blocks(num_compositions=0)
    LatencyEstimator(bm, mm, str(store), 1, SIZE, rounds=1, verbose=False).profile_all_blocks(num_compositions=0)
    opt = ScalingOptimizer(str(store), SIZE, bm, mm)
    return SimpleNamespace(root=root, mm=mm, bm=bm, store=store, opt=opt, n=len(bm.block_names),
                           counter=iter(range(10**6)))


def fresh_dir(c: SimpleNamespace) -> str:
    return str(c.root / f"out{next(c.counter)}")


def retrain(c: SimpleNamespace, loader: Any, **kwargs: Any) -> Any:
    val = kwargs.pop("val_loader", batches(1, seed=1))
    return BlockRetrainer(tiny(), c.bm, c.mm, str(c.store), fresh_dir(c), kwargs.pop("max_epoch", 1), loader,
                          val_loader=val, verbose=False, **kwargs)


def profiler(c: SimpleNamespace, loader: Any, **kwargs: Any) -> BlockProfiler:
    return BlockProfiler(tiny(), c.bm, c.mm, str(c.store), loader, kwargs.pop("size", SIZE), verbose=False, **kwargs)


def latency(c: SimpleNamespace, **kwargs: Any) -> LatencyEstimator:
    args = {"test_sample_num": 1, "model_input_size": SIZE, **kwargs}
    return LatencyEstimator(c.bm, c.mm, str(c.store), verbose=False, **args)


def runtime(c: SimpleNamespace, source: Callable[[], Any] = lambda: Budget(), **kwargs: Any) -> OnDeviceRuntime:
    return OnDeviceRuntime(c.opt, source, **kwargs)


def nan_images() -> list:
    data = batches()
    data[0][0][0, 0, 0, 0] = float("nan")
    return data


def edited_profile(c: SimpleNamespace, name: str, edit: Callable[[dict], None]) -> Path:
    """A copy of the store's profile file ``name`` changed by ``edit``, in a directory of its own."""
    out = c.root / f"profile{next(c.counter)}"
    out.mkdir()
    data = json.loads((c.store / name).read_text())
    edit(data)
    (out / name).write_text(json.dumps(data))
    return out


def set_block(field: str, value: Any) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        d["blocks"][1][field] = value
    return edit


def _drop_last_block(d: dict) -> None:
    name = d["blocks"][-1]["block"]
    d["blocks"] = [b for b in d["blocks"] if not (b["block"] == name and b["sparsity"] > 0)]


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: 'cuda' is a good device")

# (row id, call, expected error type, words the message must contain)
CASES = [
    # -- AutoBlockManager ---------------------------------------------------------------
    ("abm-empty-sparsities", lambda c: AutoBlockManager([], tiny(), None, SIZE, verbose=False),
     InvalidSparsityError, ["block_sparsity", "empty"]),
    ("abm-sparsity-string", lambda c: AutoBlockManager("0.5", tiny(), None, SIZE, verbose=False),
     InvalidSparsityError, ["block_sparsity", "'0.5'", "list of numbers"]),
    ("abm-sparsity-bool", lambda c: AutoBlockManager([0.0, True], tiny(), None, SIZE, verbose=False),
     InvalidSparsityError, ["block_sparsity", "list of numbers"]),
    ("abm-sparsity-one", lambda c: AutoBlockManager([0.0, 1.0], tiny(), None, SIZE, verbose=False),
     InvalidSparsityError, ["[0, 1)"]),
    ("abm-sparsity-nan", lambda c: AutoBlockManager([0.0, float("nan")], tiny(), None, SIZE, verbose=False),
     InvalidSparsityError, ["[0, 1)", "nan"]),
    ("abm-sparsity-inf", lambda c: AutoBlockManager([0.0, float("inf")], tiny(), None, SIZE, verbose=False),
     InvalidSparsityError, ["[0, 1)", "inf"]),
    ("abm-model-string", lambda c: AutoBlockManager(SPARSITIES, "resnet18", None, SIZE, verbose=False),
     ArgumentTypeError, ["model", "torch.nn.Module", "'resnet18'"]),
    ("abm-input-size-int", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, 32, verbose=False),
     ArgumentTypeError, ["model_input_size", "32", "(1, 3, 32, 32)"]),
    ("abm-input-size-zero", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, (0, 3, 16, 16), verbose=False),
     InvalidArgumentError, ["model_input_size", "(0, 3, 16, 16)", "positive"]),
    ("abm-input-size-short", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, (3,), verbose=False),
     InvalidArgumentError, ["model_input_size", "at least 2 dimensions"]),
    ("abm-input-size-float", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, (1, 3, 16.5, 16), verbose=False),
     InvalidArgumentError, ["model_input_size", "16.5"]),
    ("abm-ratio-zero", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, SIZE, 0.0, verbose=False),
     InvalidArgumentError, ["compress_layer_max_ratio", "(0, 1]"]),
    ("abm-ratio-nan", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, SIZE, float("nan"), verbose=False),
     InvalidArgumentError, ["compress_layer_max_ratio", "nan"]),
    ("abm-ratio-string", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, SIZE, "0.1", verbose=False),
     ArgumentTypeError, ["compress_layer_max_ratio", "'0.1'"]),
    pytest.param("abm-device-cuda", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, SIZE, device="cuda",
                                                               verbose=False),
                 DeviceUnavailableError, ["device='cuda'", "no", "device='cpu'"], marks=NO_CUDA),
    ("abm-device-cuda-99", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, SIZE, device="cuda:99",
                                                      verbose=False),
     DeviceUnavailableError, ["device='cuda:99'"]),
    ("abm-device-bogus", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, SIZE, device="bogus", verbose=False),
     DeviceUnavailableError, ["device='bogus'", "not a device", "'cpu'"]),
    ("abm-device-int", lambda c: AutoBlockManager(SPARSITIES, tiny(), None, SIZE, device=0, verbose=False),
     ArgumentTypeError, ["device", "'cpu'"]),
    ("get-descendant-unknown-block", lambda c: c.bm.get_descendant("block_99", 0.5),
     InvalidArgumentError, ["'block_99'", "block_0", "block_1"]),
    ("get-descendant-unknown-sparsity", lambda c: c.bm.get_descendant("block_0", 0.3),
     InvalidSparsityError, ["0.3", "[0.0, 0.5]"]),
    ("get-descendant-sparsity-string", lambda c: c.bm.get_descendant("block_0", "0.5"),
     ArgumentTypeError, ["sparsity", "'0.5'"]),
    ("load-descendant-unknown-block", lambda c: c.bm.load_descendant(str(c.store), "block_99", 0.5),
     InvalidArgumentError, ["'block_99'", "block_0"]),
    ("load-descendant-unknown-sparsity", lambda c: c.bm.load_descendant(str(c.store), "block_0", 0.9),
     InvalidSparsityError, ["0.9", "[0.0, 0.5]"]),
    ("get-block-unknown", lambda c: c.bm.get_block("block_7"), InvalidArgumentError, ["'block_7'", "block_0"]),
    ("compose-wrong-shape", lambda c: c.bm.compose({"block_0": c.bm.get_descendant("block_1", 0.5)}),
     InvalidArgumentError, ["block_0", "shape", "get_descendant('block_0'"]),
    ("compose-failing-module", lambda c: c.bm.compose({"block_0": nn.Conv2d(1, 8, 3)}),
     InvalidArgumentError, ["block_0", "fails"]),
    ("compose-unknown-block", lambda c: c.bm.compose({"block_9": nn.Identity()}),
     InvalidArgumentError, ["'block_9'", "block_0"]),
    ("compose-not-a-module", lambda c: c.bm.compose({"block_0": 0.5}),
     ArgumentTypeError, ["blocks['block_0']", "torch.nn.Module"]),
    ("compose-not-a-dict", lambda c: c.bm.compose([nn.Identity()]),
     ArgumentTypeError, ["blocks", "dict"]),
    # -- BlockSwitcher ------------------------------------------------------------------
    ("switcher-cache-negative", lambda c: BlockSwitcher(str(c.store), tiny(), cache_bytes=-1),
     InvalidArgumentError, ["cache_bytes", "-1", ">= 0"]),
    ("switcher-cache-string", lambda c: BlockSwitcher(str(c.store), tiny(), cache_bytes="1GB"),
     ArgumentTypeError, ["cache_bytes", "'1GB'"]),
    ("switch-float", lambda c: c.opt.switcher.switch(0.3),
     ArgumentTypeError, ["sparsities", "0.3", "one sparsity per block", "dict"]),
    ("switch-none", lambda c: c.opt.switcher.switch(None),
     ArgumentTypeError, ["sparsities", "None", "one sparsity per block"]),
    ("switch-string", lambda c: c.opt.switcher.switch("0.5"),
     ArgumentTypeError, ["sparsities", "'0.5'"]),
    ("switch-strings", lambda c: c.opt.switcher.switch(["abc"] * c.n),
     ArgumentTypeError, ["sparsities[0]", "'abc'", "number"]),
    ("switch-nones", lambda c: c.opt.switcher.switch([None] * c.n),
     ArgumentTypeError, ["sparsities[0]", "None"]),
    ("switch-dict-string", lambda c: c.opt.switcher.switch({"block_0": "0.5"}),
     ArgumentTypeError, ["sparsities['block_0']", "'0.5'"]),
    ("switch-wrong-length", lambda c: c.opt.switcher.switch([0.0] * (c.n + 1)),
     InvalidSparsityError, ["3 sparsities for 2 blocks"]),
    ("switch-unknown-sparsity", lambda c: c.opt.switcher.switch([0.3] * c.n),
     InvalidSparsityError, ["0.3", "not in the blocks directory", "[0.0, 0.5]"]),
    ("switch-unknown-block", lambda c: c.opt.switcher.switch({"block_9": 0.5}),
     InvalidSparsityError, ["block_9", "block_0"]),
    # -- ScalingOptimizer.update_model --------------------------------------------------
    ("update-model-string", lambda c: c.opt.update_model("fast"),
     ArgumentTypeError, ["max_latency", "'fast'", "positive number of seconds"]),
    ("update-model-negative", lambda c: c.opt.update_model(-1.0),
     InvalidArgumentError, ["max_latency", "-1", "positive"]),
    ("update-model-nan", lambda c: c.opt.update_model(None, float("nan")),
     InvalidArgumentError, ["max_memory", "nan", "positive number of bytes"]),
    ("update-model-zero-memory", lambda c: c.opt.update_model(None, 0),
     InvalidArgumentError, ["max_memory", "> 0"]),
    ("update-model-bool", lambda c: c.opt.update_model(True),
     ArgumentTypeError, ["max_latency", "True"]),
    # -- OnDeviceRuntime ----------------------------------------------------------------
    ("runtime-poll-negative", lambda c: runtime(c, poll_interval_s=-1),
     InvalidArgumentError, ["poll_interval_s", "-1", "> 0"]),
    ("runtime-poll-zero", lambda c: runtime(c, poll_interval_s=0), InvalidArgumentError, ["poll_interval_s", "> 0"]),
    ("runtime-poll-inf", lambda c: runtime(c, poll_interval_s=float("inf")),
     InvalidArgumentError, ["poll_interval_s", "finite"]),
    ("runtime-threshold-nan", lambda c: runtime(c, threshold=float("nan")),
     InvalidArgumentError, ["threshold", "nan", ">= 0"]),
    ("runtime-threshold-negative", lambda c: runtime(c, threshold=-0.1),
     InvalidArgumentError, ["threshold", "-0.1"]),
    ("runtime-threshold-string", lambda c: runtime(c, threshold="5%"),
     ArgumentTypeError, ["threshold", "'5%'"]),
    ("runtime-source-not-callable", lambda c: OnDeviceRuntime(c.opt, Budget(0.1)),
     ArgumentTypeError, ["budget_source", "callable", "Budget"]),
    ("runtime-source-returns-none", lambda c: runtime(c, lambda: None).step(),
     ArgumentTypeError, ["budget_source returned None", "Budget("]),
    ("runtime-source-returns-tuple", lambda c: runtime(c, lambda: (0.1, 1e6)).step(),
     ArgumentTypeError, ["budget_source returned (0.1, 1000000.0)", "tuple", "Budget("]),
    ("memory-source-fraction-two", lambda c: memory_budget_source(2), InvalidArgumentError, ["fraction", "(0, 1]"]),
    ("memory-source-fraction-zero", lambda c: memory_budget_source(0.0), InvalidArgumentError, ["fraction", "0"]),
    ("memory-source-fraction-nan", lambda c: memory_budget_source(float("nan")),
     InvalidArgumentError, ["fraction", "nan"]),
    ("memory-source-reserve-negative", lambda c: memory_budget_source(0.5, reserve_bytes=-5),
     InvalidArgumentError, ["reserve_bytes", "-5"]),
    ("memory-source-latency-zero", lambda c: memory_budget_source(0.5, max_latency_s=0.0),
     InvalidArgumentError, ["max_latency_s", "None for no limit"]),
    # -- LatencyEstimator ---------------------------------------------------------------
    ("latency-compositions-negative", lambda c: latency(c).profile_all_blocks(num_compositions=-3),
     InvalidArgumentError, ["num_compositions", "-3", ">= 0"]),
    ("latency-compositions-float", lambda c: latency(c).profile_all_blocks(num_compositions=2.5),
     ArgumentTypeError, ["num_compositions", "2.5"]),
    ("latency-threads-zero", lambda c: latency(c, num_threads=0), InvalidArgumentError, ["num_threads", "0", ">= 1"]),
    ("latency-threads-negative", lambda c: latency(c, num_threads=-1), InvalidArgumentError, ["num_threads", "-1"]),
    ("latency-threads-float", lambda c: latency(c, num_threads=2.0), ArgumentTypeError, ["num_threads", "2.0"]),
    ("latency-samples-zero", lambda c: latency(c, test_sample_num=0),
     InvalidArgumentError, ["test_sample_num", ">= 1"]),
    ("latency-samples-string", lambda c: latency(c, test_sample_num="10"),
     ArgumentTypeError, ["test_sample_num", "'10'"]),
    ("latency-rounds-zero", lambda c: latency(c, rounds=0), InvalidArgumentError, ["rounds", ">= 1"]),
    ("latency-backend", lambda c: latency(c, backend="tensorrt"),
     InvalidArgumentError, ["backend", "'torch'", "'onnxruntime'", "'tensorrt'"]),
    ("latency-method", lambda c: latency(c, method="fast"), InvalidArgumentError, ["method", "'in_situ'", "'fast'"]),
    ("latency-onnx-in-situ", lambda c: latency(c, backend="onnxruntime", method="in_situ"),
     InvalidArgumentError, ["in-situ", "method='isolated'"]),
    ("latency-input-size", lambda c: latency(c, model_input_size=16),
     ArgumentTypeError, ["model_input_size", "16"]),
    pytest.param("latency-device-cuda", lambda c: latency(c, device="cuda"),
                 DeviceUnavailableError, ["device='cuda'"], marks=NO_CUDA),
    ("latency-device-bogus", lambda c: latency(c, device="gpu"), DeviceUnavailableError, ["device='gpu'"]),
    # -- BlockRetrainer -----------------------------------------------------------------
    ("retrainer-epochs-float", lambda c: retrain(c, batches(), max_epoch=1.5),
     ArgumentTypeError, ["max_epoch", "1.5", "whole number"]),
    ("retrainer-epochs-string", lambda c: retrain(c, batches(), max_epoch="2"),
     ArgumentTypeError, ["max_epoch", "'2'"]),
    ("retrainer-epochs-nan", lambda c: retrain(c, batches(), max_epoch=float("nan")),
     ArgumentTypeError, ["max_epoch", "nan"]),
    ("retrainer-epochs-zero", lambda c: retrain(c, batches(), max_epoch=0), InvalidArgumentError, ["max_epoch", ">= 1"]),
    ("retrainer-epochs-bool", lambda c: retrain(c, batches(), max_epoch=True), ArgumentTypeError, ["max_epoch", "True"]),
    ("retrainer-composition-epochs", lambda c: retrain(c, batches(), composition_epochs=-1),
     InvalidArgumentError, ["composition_epochs", "-1", "None (automatic)"]),
    pytest.param("retrainer-device-cuda", lambda c: retrain(c, batches(), device="cuda"),
                 DeviceUnavailableError, ["device='cuda'"], marks=NO_CUDA),
    ("retrainer-device-bogus", lambda c: retrain(c, batches(), device="cpu0"),
     DeviceUnavailableError, ["device='cpu0'"]),
    ("retrainer-dict-batches", lambda c: retrain(c, [{"image": x, "label": y} for x, y in batches()]).train_all_blocks(),
     InvalidDataError, ["train_loader", "dict", "'image'", "(data, labels)"]),
    ("retrainer-bare-tensors", lambda c: retrain(c, [x for x, _ in batches()]).train_all_blocks(),
     InvalidDataError, ["train_loader", "bare tensor", "(8, 3, 16, 16)", "(data, labels)"]),
    ("retrainer-one-channel", lambda c: retrain(c, batches(channels=1)).train_all_blocks(),
     InvalidDataError, ["train_loader", "(8, 1, 16, 16)", "3 channels"]),
    ("retrainer-nan-images", lambda c: retrain(c, nan_images()).train_all_blocks(),
     InvalidDataError, ["train_loader", "1 NaN or infinite"]),
    ("retrainer-bad-val-loader", lambda c: retrain(c, batches(), val_loader=batches(channels=1)).train_all_blocks(),
     InvalidDataError, ["val_loader", "channels"]),
    ("retrainer-labels-out-of-range", lambda c: retrain(c, [(x, y + 10) for x, y in batches()]).train_all_blocks(),
     InvalidDataError, ["train_loader", "labels range", f"[0, {CLASSES})"]),
    ("retrainer-uint8-images", lambda c: retrain(c, [(x.to(torch.uint8), y) for x, y in batches()]).train_all_blocks(),
     InvalidDataError, ["torch.uint8", "float()"]),
    # -- BlockProfiler ------------------------------------------------------------------
    ("profiler-nan-images", lambda c: profiler(c, nan_images()).profile_all_blocks(),
     InvalidDataError, ["test_loader", "NaN"]),
    ("profiler-labels-out-of-range", lambda c: profiler(c, [(x, y + CLASSES) for x, y in batches()]).profile_all_blocks(),
     InvalidDataError, ["test_loader", "labels range", f"[0, {CLASSES})"]),
    ("profiler-negative-labels", lambda c: profiler(c, [(x, y - 5) for x, y in batches()]).profile_all_blocks(),
     InvalidDataError, ["labels range from -5"]),
    ("profiler-float-labels", lambda c: profiler(c, [(x, y.float()) for x, y in batches()]).profile_all_blocks(),
     InvalidDataError, ["torch.float32", "int64", "labels.long()"]),
    ("profiler-label-count", lambda c: profiler(c, [(x, y[:3]) for x, y in batches()]).profile_all_blocks(),
     InvalidDataError, ["8 samples but 3 labels"]),
    ("profiler-one-channel", lambda c: profiler(c, batches(channels=1)).profile_all_blocks(),
     InvalidDataError, ["test_loader", "(8, 1, 16, 16)"]),
    ("profiler-bare-tensors", lambda c: profiler(c, [x for x, _ in batches()]).profile_all_blocks(),
     InvalidDataError, ["test_loader", "bare tensor"]),
    ("profiler-dicts", lambda c: profiler(c, [{"x": x} for x, _ in batches()]).profile_all_blocks(),
     InvalidDataError, ["test_loader", "dict"]),
    ("profiler-one-item-tuples", lambda c: profiler(c, [(x,) for x, _ in batches()]).profile_all_blocks(),
     InvalidDataError, ["tuple of 1 item"]),
    ("profiler-compositions-negative", lambda c: profiler(c, batches()).profile_all_blocks(num_compositions=-1),
     InvalidArgumentError, ["num_compositions", "-1"]),
    ("profiler-validate-zero", lambda c: profiler(c, batches()).validate_accuracy_model(num_compositions=0),
     InvalidArgumentError, ["num_compositions", ">= 1"]),
    ("profiler-input-size", lambda c: profiler(c, batches(), size=(1, -3, 16, 16)),
     InvalidArgumentError, ["model_input_size", "positive"]),
    pytest.param("profiler-device-cuda", lambda c: profiler(c, batches(), device="cuda"),
                 DeviceUnavailableError, ["device='cuda'"], marks=NO_CUDA),
    # -- profile files ------------------------------------------------------------------
    ("profile-nan-drop", lambda c: ModelProfile.load(edited_profile(c, "block_profile.json",
                                                                  set_block("metric_drop", float("nan")))),
     InvalidProfileError, ["block_profile.json", "NaN", "profile the blocks again"]),
    ("profile-negative-size", lambda c: ModelProfile.load(edited_profile(c, "block_profile.json",
                                                                       set_block("size_bytes", -1000))),
     InvalidProfileError, ["size_bytes is -1000", "profile the blocks again"]),
    ("profile-edited-drop", lambda c: ModelProfile.load(edited_profile(c, "block_profile.json",
                                                                     set_block("metric_drop", 0.0123))),
     InvalidProfileError, ["drop 0.0123", "profile the blocks again"]),
    ("profile-negative-frame", lambda c: ModelProfile.load(edited_profile(
        c, "block_profile.json", lambda d: d.update(frame_size_bytes=-1))),
     InvalidProfileError, ["frame_size_bytes is -1"]),
    ("profile-missing-descendant", lambda c: ModelProfile.load(edited_profile(c, "block_profile.json",
                                                                            _drop_last_block)),
     InvalidProfileError, ["different sparsities"]),
    ("latency-profile-nan", lambda c: LatencyProfile.load(edited_profile(c, "latency_profile.json",
                                                                       set_block("latency_s", float("nan")))),
     InvalidProfileError, ["invalid latencies", "NaN", "profile latency again"]),
    ("latency-profile-negative-scale", lambda c: LatencyProfile.load(edited_profile(
        c, "latency_profile.json", lambda d: d.update(scale=-1.236))),
     InvalidProfileError, ["scale -1.236", "profile latency again"]),
    ("latency-profile-negative-fixed-time", lambda c: LatencyProfile.load(edited_profile(
        c, "latency_profile.json", lambda d: d.update(offset_s=-10.0))),
     InvalidProfileError, ["offset -10.0", "non-negative"]),
    ("latency-profile-missing-descendant", lambda c: LatencyProfile.load(edited_profile(
        c, "latency_profile.json", _drop_last_block)),
     InvalidProfileError, ["different sparsities"]),
]


def _row(case: Any) -> Any:
    if hasattr(case, "marks"):  # already a pytest.param (a ParameterSet is a tuple too)
        return pytest.param(*case.values, marks=case.marks, id=case.values[0])
    return pytest.param(*case, id=case[0])


@pytest.mark.parametrize("name, call, error, words", [_row(c) for c in CASES])
def test_bad_input_is_a_clear_legodnn_error(ctx: SimpleNamespace, name: str, call: Callable, error: type,
                                            words: list) -> None:
    with pytest.raises(LegoDNNError) as info:
        call(ctx)
    assert isinstance(info.value, error), f"{name}: {type(info.value).__name__}: {info.value}"
    message = str(info.value)
    for word in words:
        assert word in message, f"{name}: {word!r} not in {message!r}"


def test_value_and_type_errors_stay_builtin_errors_too() -> None:
    """Old ``except ValueError`` / ``except TypeError`` code keeps catching the new errors."""
    with pytest.raises(ValueError):
        check_int("n", -1, minimum=0)
    with pytest.raises(TypeError):
        check_int("n", "1")
    with pytest.raises(ValueError):
        check_float("x", float("nan"))


def test_good_inputs_pass(ctx: SimpleNamespace) -> None:
    """What the checks must not refuse: numpy numbers, torch.Size, dict switches, None budgets."""
    bm = ctx.bm
    assert AutoBlockManager(np.array([0.0, 0.5]).tolist(), tiny(), None, torch.Size(SIZE), np.float64(0.125),
                            torch.device("cpu"), verbose=False).model_input_size == SIZE
    assert bm.get_descendant("block_0", 0.5 + 1e-12) is not None
    assert bm.compose({"block_0": bm.get_descendant("block_0", 0.5), "block_1": copy.deepcopy(bm.get_block("block_1"))})
    sw = ctx.opt.switcher
    assert sw.switch({"block_1": np.float32(0.5)}).sparsities == (0.0, 0.5)
    assert sw.switch(torch.tensor([0.5, 0.0])).sparsities == (0.5, 0.0)
    assert sw.switch((0.0, 0.0)).sparsities == (0.0, 0.0)
    assert ctx.opt.update_model(None, None).feasible
    assert ctx.opt.update_model(math.inf, np.int64(10**9)).feasible
    runtime(ctx, poll_interval_s=np.float32(0.5), threshold=0)
    assert memory_budget_source(1, reserve_bytes=0, max_latency_s=None)().max_memory_bytes > 0


def test_concurrent_switches_report_their_own_configuration(ctx: SimpleNamespace) -> None:
    """The result of a switch is built under the lock: two threads switching to different
    configurations each get back the configuration they installed."""
    sw = BlockSwitcher(str(ctx.store), tiny())
    configs = ([0.5, 0.0], [0.0, 0.5])
    wrong: list = []

    def worker(config: list) -> None:
        for _ in range(300):
            result = sw.switch(config)
            if list(result.sparsities) != config:
                wrong.append(result.sparsities)

    threads = [threading.Thread(target=worker, args=(c,)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_partial_switches_from_two_threads_both_hold(ctx: SimpleNamespace) -> None:
    """A dict switch merges with the live configuration under the lock: two threads
    switching different blocks never undo each other."""
    sw = BlockSwitcher(str(ctx.store), tiny())
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        barrier.wait()
        sw.switch({name: 0.5})

    for _ in range(50):
        sw.switch([0.0, 0.0])
        threads = [threading.Thread(target=worker, args=(n,)) for n in ("block_0", "block_1")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sw.sparsities == [0.5, 0.5]


# -- latency calibration -------------------------------------------------------------------

def test_calibration_cannot_invert_on_a_loaded_machine() -> None:
    """Measurements that fall as the blocks' time rises (a loaded machine) fit a negative
    scale by plain least squares; the constrained fit keeps the scale positive and the
    time outside blocks non-negative, so every estimate stays positive."""
    sums = np.array([0.010, 0.020, 0.030, 0.040, 0.050, 0.060])
    measured = np.array([0.110, 0.095, 0.080, 0.070, 0.052, 0.041])
    frame = 0.01
    lstsq = np.polyfit(sums, measured - frame, 1)
    assert lstsq[0] < 0  # what unconstrained least squares did
    scale, offset = _fit(sums, measured - frame, frame)
    assert scale >= MIN_SCALE and frame + offset >= 0
    assert all(frame + offset + scale * s > 0 for s in [0.0, *sums])
    s2, o2 = _choose_calibration(sums, measured, frame, min_sum=0.001)
    assert s2 > 0 and frame + o2 + s2 * 0.001 > 0


def test_calibration_is_kept_only_when_it_beats_the_plain_sum() -> None:
    rng = np.random.default_rng(0)
    sums = rng.uniform(0.01, 0.05, 12)
    frame = 0.005
    slower = frame + 0.002 + 1.3 * sums  # compositions really 30% slower than their blocks: calibrate
    scale, offset = _choose_calibration(sums, slower, frame)
    assert scale == pytest.approx(1.3, rel=1e-6) and offset == pytest.approx(0.002, abs=1e-9)
    exact = frame + sums + rng.normal(0, 1e-5, 12)  # the plain sum is right, only noise left: keep it
    assert _choose_calibration(sums, exact, frame) == (1.0, 0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1e-4, 1.0), min_size=4, max_size=12), st.lists(st.floats(1e-4, 2.0), min_size=12,
       max_size=12), st.floats(0.0, 0.5))
def test_calibration_estimates_are_always_positive(sums: list, measured: list, frame: float) -> None:
    x = np.array(sums)
    y = np.array(measured[: len(sums)])
    scale, offset = _choose_calibration(x, y, frame, min_sum=float(x.min()))
    assert scale > 0 and math.isfinite(offset) and frame + offset >= 0
    assert all(frame + offset + scale * s > 0 for s in x)


# -- property-based: numeric arguments -----------------------------------------------------

ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.just([1]), st.just(np.float64(0.5)), st.just(np.int32(3)),
)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_whole(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_property(call: Callable[[Any], Any], good: bool, name: str, value: Any) -> None:
    if good:
        call(value)  # must not raise
        return
    with pytest.raises(LegoDNNError) as info:
        call(value)
    assert name in str(info.value), f"{name} not named in {info.value}"


@settings(max_examples=150, deadline=None)
@given(ANYTHING)
def test_runtime_poll_interval_property(value: Any) -> None:
    fake = SimpleNamespace(model=None)
    good = _is_real(value) and math.isfinite(value) and value > 0
    _check_property(lambda v: OnDeviceRuntime(fake, lambda: Budget(), poll_interval_s=v), good, "poll_interval_s",
                    value)


@settings(max_examples=150, deadline=None)
@given(ANYTHING)
def test_runtime_threshold_property(value: Any) -> None:
    fake = SimpleNamespace(model=None)
    good = _is_real(value) and math.isfinite(value) and value >= 0
    _check_property(lambda v: OnDeviceRuntime(fake, lambda: Budget(), threshold=v), good, "threshold", value)


@settings(max_examples=150, deadline=None)
@given(ANYTHING)
def test_memory_fraction_property(value: Any) -> None:
    good = _is_real(value) and math.isfinite(value) and 0 < value <= 1
    _check_property(memory_budget_source, good, "fraction", value)


@settings(max_examples=100, deadline=None)
@given(ANYTHING, st.sampled_from(["max_latency", "max_memory"]))
def test_budget_property(ctx: SimpleNamespace, value: Any, which: str) -> None:
    good = value is None or (_is_real(value) and not math.isnan(value) and value > 0)
    call = (lambda v: ctx.opt.choose(v, None)) if which == "max_latency" else (lambda v: ctx.opt.choose(None, v))
    _check_property(call, good, which, value)


@settings(max_examples=60, deadline=None)
@given(ANYTHING, st.sampled_from(["num_threads", "test_sample_num", "rounds"]))
def test_latency_estimator_counts_property(ctx: SimpleNamespace, value: Any, which: str) -> None:
    good = (_is_whole(value) and value >= 1) or (which == "num_threads" and value is None)
    _check_property(lambda v: latency(ctx, **{which: v}), good, which, value)


@settings(max_examples=40, deadline=None)
@given(ANYTHING)
def test_max_epoch_property(ctx: SimpleNamespace, value: Any) -> None:
    good = _is_whole(value) and value >= 1
    _check_property(lambda v: retrain(ctx, batches(), max_epoch=v), good, "max_epoch", value)


@settings(max_examples=200, deadline=None)
@given(ANYTHING, st.one_of(st.none(), st.integers(-5, 5)), st.one_of(st.none(), st.integers(-5, 5)))
def test_check_int_property(value: Any, lo: Any, hi: Any) -> None:
    good = _is_whole(value) and (lo is None or value >= lo) and (hi is None or value <= hi)
    _check_property(lambda v: check_int("count", v, minimum=lo, maximum=hi), good, "count", value)
    if good:
        assert check_int("count", value, minimum=lo, maximum=hi) == int(value)


@settings(max_examples=200, deadline=None)
@given(ANYTHING, st.one_of(st.none(), st.floats(-5, 5)), st.booleans(), st.booleans())
def test_check_float_property(value: Any, lo: Any, inclusive: bool, finite: bool) -> None:
    good = (_is_real(value) and not math.isnan(value) and (math.isfinite(value) or not finite)
            and (lo is None or value > lo or (inclusive and value == lo)))
    _check_property(lambda v: check_float("level", v, minimum=lo, min_inclusive=inclusive, finite=finite), good,
                    "level", value)


def test_profiles_as_written_load(ctx: SimpleNamespace, tmp_path: Path) -> None:
    """The checks on load refuse only what the profilers never write: their own files load."""
    shutil.copy(ctx.store / "block_profile.json", tmp_path / "block_profile.json")
    assert ModelProfile.load(tmp_path).blocks
    assert LatencyProfile.load(ctx.store).blocks
