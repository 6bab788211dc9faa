"""The fast path on the CPU: bf16 autocast and channels_last in retraining and profiling.

A four-conv BatchNorm model, trained for a few steps on 16x16 images whose class is
their brightest colour channel, is cut into two blocks and retrained (two block epochs,
one composition epoch) in fp32, in bf16, in channels_last and in both, from the same
store and the same data order (a seeded shuffling loader). The reference is fp32; the
differences are what each option changes:

* channels_last changes the order of the sums in the convolutions only: every weight
  within :data:`CHANNELS_LAST_TOLERANCE` (measured 1e-6, 7e-6 on other data; Adam's
  normalised steps carry rounding differences of near-zero gradients on at their own size).
* bf16 keeps about 3 significant digits in the forwards: every weight within
  :data:`BF16_TOLERANCE` of fp32 (measured 7.7e-3, where training moved weights by up to
  0.5; Adam's steps at 1e-3 can add up to about 1e-2 in 8 block steps) and each
  descendant's held-out loss within :data:`BF16_LOSS_RTOL` (measured 0.15%; 3.5% on
  random labels).

The store is the same either way (the same files, tensor names, shapes and dtypes, the
sparsity-0 blocks and the frame byte for byte the compressed store's), and with both
options off nothing changes: no key in the checkpoint, the teacher untouched.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from legodnn import AutoBlockManager, CommonModelManager, LegoDNNError
from legodnn.offline import BlockProfiler, BlockRetrainer, CompositionRetrainer
from legodnn.offline.precision import LossScaler, Precision, resolve_precision

SIZE = (1, 3, 16, 16)
CHANNELS_LAST_TOLERANCE = 1e-4
BF16_TOLERANCE = 2e-2
BF16_LOSS_RTOL = 0.10
OPTIONS = {"fp32": {}, "bf16": {"amp": "bf16"}, "channels_last": {"channels_last": True},
           "bf16_channels_last": {"amp": "bf16", "channels_last": True}}


def tiny(num_classes: int = 3) -> nn.Sequential:
    def conv(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*conv(3, 8), *conv(8, 12), nn.MaxPool2d(2), *conv(12, 12), *conv(12, 16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def images(n: int, seed: int) -> TensorDataset:
    """Noise with one channel brighter: the class is that channel."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 3, 16, 16, generator=g)
    x[torch.arange(n), labels] += 1.0
    return TensorDataset(x, labels)


def train_loader() -> DataLoader:
    return DataLoader(images(32, 0), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))


def weights(store: Path) -> Dict[str, torch.Tensor]:
    manifest = json.loads((store / "manifest.json").read_text())
    files = [manifest["frame"]["file"]] + [d["file"] for b in manifest["blocks"] for d in b["descendants"]]
    return {f"{f}/{k}": v for f in files for k, v in load_file(str(store / f)).items()}


def max_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    root = tmp_path_factory.mktemp("precision")
    torch.manual_seed(0)
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in DataLoader(images(256, 9), batch_size=32):  # a teacher that is right on most images
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    mm = CommonModelManager()
    bm = AutoBlockManager([0.0, 0.4, 0.8], model, mm, SIZE, 0.5, verbose=False)
    bm.extract_all_blocks(str(root / "compressed"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out: Dict[str, Any] = {"root": root, "model": model, "mm": mm, "bm": bm, "teacher_before": before}
    for name, options in OPTIONS.items():
        retrainer = BlockRetrainer(model, bm, mm, str(root / "compressed"), str(root / name), 2, train_loader(),
                                   DataLoader(images(16, 1), batch_size=8), verbose=False, composition_epochs=1,
                                   **options)
        retrainer.train_all_blocks()
        profiler = BlockProfiler(model, bm, mm, str(root / name), DataLoader(images(48, 2), batch_size=16), SIZE,
                                 verbose=False, **options)
        out[name] = {"profile": profiler.profile_all_blocks(num_compositions=3), "weights": weights(root / name),
                     "trained": json.loads((root / name / "manifest.json").read_text())["trained"],
                     "state": json.loads((root / name / "training" / "state.json").read_text())}
    return out


def test_channels_last_gives_the_fp32_weights_within_rounding(setup) -> None:
    assert max_difference(setup["channels_last"]["weights"], setup["fp32"]["weights"]) < CHANNELS_LAST_TOLERANCE


@pytest.mark.parametrize("name", ["bf16", "bf16_channels_last"])
def test_bf16_gives_the_fp32_weights_within_tolerance(setup, name: str) -> None:
    got, want = setup[name], setup["fp32"]
    assert 0 < max_difference(got["weights"], want["weights"]) < BF16_TOLERANCE  # 0: bf16 did run
    for key, loss in want["trained"]["best_val_loss"].items():
        assert got["trained"]["best_val_loss"][key] == pytest.approx(loss, rel=BF16_LOSS_RTOL), key


@pytest.mark.parametrize("name", list(OPTIONS)[1:])
def test_the_store_is_the_same_layout_and_the_teacher_parts_the_same_bytes(setup, name: str) -> None:
    root = setup["root"]
    got, want = setup[name]["weights"], setup["fp32"]["weights"]
    assert got.keys() == want.keys()
    assert all(got[k].shape == want[k].shape and got[k].dtype == want[k].dtype for k in got)
    new, old = (json.loads((root / p / "manifest.json").read_text()) for p in (name, "compressed"))
    assert new["frame"]["sha256"] == old["frame"]["sha256"]
    for b_new, b_old in zip(new["blocks"], old["blocks"]):
        for d_new, d_old in zip(b_new["descendants"], b_old["descendants"]):
            assert d_new["file"] == d_old["file"]
            assert (d_new["sha256"] == d_old["sha256"]) == (d_new["sparsity"] == 0.0)
    assert setup[name]["state"]["precision"] == {"amp": OPTIONS[name].get("amp"),
                                                 "channels_last": OPTIONS[name].get("channels_last", False)}


def test_the_teacher_is_given_back_unchanged(setup) -> None:
    model = setup["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, setup["teacher_before"][name]), name
    assert all(p.is_contiguous() for p in model.parameters())
    assert "precision" not in setup["fp32"]["state"] and "grad_scaler" not in setup["fp32"]["state"]


@pytest.mark.parametrize("name", list(OPTIONS)[1:])
def test_profiles_match_fp32(setup, name: str) -> None:
    got, want = setup[name]["profile"], setup["fp32"]["profile"]
    assert want.teacher_metric > 0.6  # a teacher worth profiling
    assert got.num_test_samples == want.num_test_samples == 48
    # one image of 48 may change its class where two scores are within bf16's rounding
    tolerance = 0.0 if name == "channels_last" else 1 / 48 + 1e-9
    assert got.teacher_metric == pytest.approx(want.teacher_metric, abs=tolerance)
    for a, b in zip(got.blocks, want.blocks):
        assert (a.block, a.sparsity, a.size_bytes, a.flops) == (b.block, b.sparsity, b.size_bytes, b.flops)
        assert a.metric == pytest.approx(b.metric, abs=tolerance), (a.block, a.sparsity)


class Stop(Exception):
    pass


def stopping_at(call: int) -> Any:
    count = {"n": 0}

    @functools.wraps(F.mse_loss)
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        count["n"] += 1
        if count["n"] == call:
            raise Stop
        return F.mse_loss(out, target)

    return loss


def test_resume_with_bf16_ends_with_the_uninterrupted_weights(setup, tmp_path: Path) -> None:
    """Stopped in the 3rd batch of epoch 2 (a checkpoint after every step), then resumed: the
    weights of the uninterrupted bf16 run, bit for bit."""
    s = setup
    args = (s["model"], s["bm"], s["mm"], str(s["root"] / "compressed"), str(tmp_path / "t"), 2)
    keys = 2 * 2  # descendants: loss calls per training batch
    call = (4 * keys + 2 * keys) + 2 * keys + 1  # epoch 1 (4 batches, 2 held-out), 2 batches, then stop
    options = dict(verbose=False, composition_epochs=1, amp="bf16", checkpoint_steps=1)
    with pytest.raises(Stop):
        BlockRetrainer(*args, train_loader(), DataLoader(images(16, 1), batch_size=8), loss_fn=stopping_at(call),
                       **options).train_all_blocks()
    state = json.loads((tmp_path / "t" / "training" / "state.json").read_text())
    assert (state["epochs_done"], state["position"]["step"], state["precision"]["amp"]) == (1, 2, "bf16")
    BlockRetrainer(*args, train_loader(), DataLoader(images(16, 1), batch_size=8), **options).train_all_blocks()
    assert max_difference(weights(tmp_path / "t"), s["bf16"]["weights"]) == 0.0


def test_bad_values_are_refused_with_what_to_do(setup, tmp_path: Path) -> None:
    s = setup
    args = (s["model"], s["bm"], s["mm"], str(s["root"] / "compressed"))
    with pytest.raises(LegoDNNError, match=r"amp='fp16' needs a CUDA device.*use amp='bf16' on the CPU"):
        BlockRetrainer(*args, str(tmp_path / "a"), 1, train_loader(), amp="fp16")
    with pytest.raises(LegoDNNError, match=r"amp must be None \(fp32\), 'bf16' or 'fp16', got 'float16'"):
        BlockRetrainer(*args, str(tmp_path / "b"), 1, train_loader(), amp="float16")
    with pytest.raises(LegoDNNError, match=r"amp must be None .* got torch.bfloat16"):
        BlockRetrainer(*args, str(tmp_path / "c"), 1, train_loader(), amp=torch.bfloat16)
    with pytest.raises(LegoDNNError, match=r"channels_last must be True or False, got 'yes' \(str\)"):
        BlockRetrainer(*args, str(tmp_path / "d"), 1, train_loader(), channels_last="yes")
    with pytest.raises(LegoDNNError, match="amp='fp16' needs a CUDA device"):
        BlockProfiler(s["model"], s["bm"], s["mm"], str(s["root"] / "fp32"), [], SIZE, amp="fp16")
    with pytest.raises(LegoDNNError, match="channels_last must be True or False, got 1"):
        BlockProfiler(s["model"], s["bm"], s["mm"], str(s["root"] / "fp32"), [], SIZE, channels_last=1)
    with pytest.raises(LegoDNNError, match="amp='fp16' needs a CUDA device"):
        CompositionRetrainer(*args[:3], str(s["root"] / "fp32"), str(tmp_path / "e"), 1, train_loader(), amp="fp16")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_fp16_loss_scaling_skips_overflowing_steps_and_round_trips() -> None:
    """The GradScaler path fp16 takes on a GPU, run on the CPU (which has a GradScaler too):
    an overflowing gradient skips the step and halves the scale; the state survives JSON."""
    scaler = LossScaler(Precision("fp16", False, "cpu"))
    w = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler.scale((w * 2).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.allclose(w.detach(), torch.full((2,), 0.8))  # unscaled gradient 2, one step of 0.1
    scale = scaler.state_dict()["scale"]
    opt.zero_grad()
    scaler.scale((w * float("inf")).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.allclose(w.detach(), torch.full((2,), 0.8)) and scaler.state_dict()["scale"] == scale / 2
    again = LossScaler(Precision("fp16", False, "cpu"))
    again.load_state_dict(json.loads(json.dumps(scaler.state_dict())))
    assert again.state_dict() == scaler.state_dict()
    off = LossScaler(resolve_precision("bf16", False, "cpu"))
    loss = (w * 2).sum()
    assert off.scale(loss) is loss and off.state_dict() is None and not off.enabled


def test_measured_differences(setup) -> None:  # printed with -s, for the record
    for name in list(OPTIONS)[1:]:
        diff = max_difference(setup[name]["weights"], setup["fp32"]["weights"])
        want = setup["fp32"]["trained"]["best_val_loss"]
        rel = max(abs(setup[name]["trained"]["best_val_loss"][k] - v) / v for k, v in want.items())
        print(f"{name}: weights within {diff:.3g}, held-out losses within {rel:.3g}; teacher "
              f"{setup[name]['profile'].teacher_metric:.4f} vs {setup['fp32']['profile'].teacher_metric:.4f}")
