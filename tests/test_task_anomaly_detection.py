"""Anomaly detection: AUROC against known answers and scikit-learn, the MVTec AD and one-class
loaders on tiny data written here, bad input, both models, the manager and the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from cv_tasks import get_model, get_model_info, get_model_manager, list_models
from cv_tasks.anomaly_detection.datasets import (
    MVTecAD,
    OneClassDataset,
    digits_one_class_dataloaders,
    imagefolder_one_class_dataloaders,
    mvtec_dataloaders,
)
from cv_tasks.anomaly_detection.errors import (
    AnomalyDatasetError,
    DatasetNotFoundError,
    UndefinedMetricError,
)
from cv_tasks.anomaly_detection.metrics import (
    AUROCAccumulator,
    average_ranks,
    pixel_roc_auc,
    roc_auc,
)
from cv_tasks.anomaly_detection.model_manager import AnomalyModelManager
from cv_tasks.anomaly_detection.scoring import split_output
from cv_tasks.anomaly_detection.synthetic import DEFECTS, write_synthetic_mvtec
from cv_tasks.anomaly_detection.train import train_anomaly_model
from cv_tasks.pipeline import describe, run_pipeline

# small variants of each registered model, for CPU tests
SMALL = {
    "conv_autoencoder": dict(width=8),
    "rotation_resnet": dict(layers=(1, 1, 1, 1), base_width=8),
}
SIZE = 32


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mvtec")
    write_synthetic_mvtec(root, "texture", image_size=SIZE, num_train=24, num_test_good=6, num_test_defect=4)
    return root


def _category(mvtec_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic category, to break."""
    import shutil

    return Path(shutil.copytree(mvtec_root / "texture", tmp_path / "texture"))


# -- metric: known answers ----------------------------------------------------------------
def test_auroc_perfect_reversed_and_ties() -> None:
    labels = [0, 0, 0, 1, 1]
    assert roc_auc([0.1, 0.2, 0.3, 0.8, 0.9], labels) == 1.0
    assert roc_auc([0.9, 0.8, 0.7, 0.2, 0.1], labels) == 0.0
    assert roc_auc([0.5] * 5, labels) == 0.5  # all tied: chance
    # ties by hand: positives 0.4 and 0.8, negatives 0.1 and 0.4; of the 4 (pos, neg) pairs,
    # 0.8 beats both (2), 0.4 beats 0.1 (1) and ties 0.4 (0.5): 3.5 / 4
    assert roc_auc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auroc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    for n in (7, 50, 400):
        scores = torch.randint(0, 6, (n,), generator=g).double() / 5  # many ties
        labels = torch.randint(0, 2, (n,), generator=g)
        labels[:2] = torch.tensor([0, 1])
        assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)


def test_pixel_auroc_known_answers() -> None:
    masks = torch.zeros(1, 1, 4, 4)
    masks[0, 0, 1, 2] = 1.0
    assert pixel_roc_auc(masks.clone(), masks) == 1.0  # the mask as the map: perfect
    # one corrupted pixel: a normal pixel scores as high as the defect; the defect beats 14 of
    # the 15 normal pixels and ties one: (14 + 0.5) / 15
    maps = masks.clone()
    maps[0, 0, 3, 3] = 1.0
    assert pixel_roc_auc(maps, masks) == pytest.approx(14.5 / 15)
    with pytest.raises(ValueError, match="do not match masks"):
        pixel_roc_auc(torch.zeros(1, 1, 8, 8), masks)


def test_auroc_bad_input() -> None:
    with pytest.raises(UndefinedMetricError, match="all 3 samples are normal"):
        roc_auc([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="undefined"):  # a ValueError, as scikit-learn raises
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="one label per score"):
        roc_auc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="no samples"):
        AUROCAccumulator().compute()


def test_scores_from_outputs() -> None:
    maps = torch.zeros(2, 1, 4, 4)
    maps[1, 0, 0, :] = 4.0  # 4 of 16 pixels at 4: mean 1
    scores, got_maps = split_output(maps)
    assert scores.tolist() == [0.0, 1.0] and got_maps is maps
    assert split_output(torch.tensor([[0.5], [2.0]]))[0].tolist() == [0.5, 2.0]
    assert split_output(torch.tensor([0.5, 2.0]))[1] is None
    with pytest.raises(ValueError, match="scores \\(B,\\) or a map"):
        split_output(torch.zeros(2, 10))  # class logits are not anomaly scores
    with pytest.raises(ValueError, match="got tuple"):
        split_output((maps,))


# -- data ---------------------------------------------------------------------------------
def test_mvtec_layout(mvtec_root: Path) -> None:
    train_loader, test_loader = mvtec_dataloaders(mvtec_root, "texture", image_size=SIZE, batch_size=8)
    assert len(train_loader.dataset) == 24 and len(test_loader.dataset) == 6 + 4 * len(DEFECTS)
    images, labels, masks = next(iter(train_loader))
    assert images.shape == (8, 3, SIZE, SIZE) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert labels.sum() == 0 and masks.sum() == 0  # normal images only
    test = MVTecAD(mvtec_root / "texture", split="test", image_size=SIZE)
    assert test.defects == sorted(DEFECTS)
    for i in range(len(test)):
        image, label, mask = test[i]
        assert mask.shape == (1, SIZE, SIZE) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert (mask.sum() > 0) == (label == 1)  # defects have masks; good images none
    # resized with its image: a 16x16 load keeps mask and image aligned
    small = MVTecAD(mvtec_root, "texture", "test", image_size=16)
    assert small[len(small) - 1][2].shape == (1, 16, 16)


def test_mvtec_bad_input(mvtec_root: Path, tmp_path: Path) -> None:
    from PIL import Image

    with pytest.raises(DatasetNotFoundError, match="is not a directory"):
        MVTecAD(tmp_path / "nowhere")
    cat = _category(mvtec_root, tmp_path)
    mask = next((cat / "ground_truth" / "spot").iterdir())
    Image.new("L", (SIZE + 3, SIZE)).save(mask)
    with pytest.raises(AnomalyDatasetError, match="must have its image's width and height"):
        MVTecAD(cat, split="test")
    mask.unlink()
    with pytest.raises(DatasetNotFoundError, match="no mask for the defect image"):
        MVTecAD(cat, split="test")
    for defect in DEFECTS:
        for p in (cat / "test" / defect).iterdir():
            p.unlink()
    with pytest.raises(UndefinedMetricError, match="only good images"):
        MVTecAD(cat, split="test")
    for p in (cat / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetNotFoundError, match="train/good"):
        MVTecAD(cat, split="train")
    (cat / "train" / "good").rmdir()
    with pytest.raises(DatasetNotFoundError, match="normal images only"):
        mvtec_dataloaders(cat)
    cat2 = _category(mvtec_root, tmp_path / "b")
    (cat2 / "train" / "good" / "000.png").write_bytes(b"not a png")
    with pytest.raises(AnomalyDatasetError, match="cannot read the image .*000.png"):
        MVTecAD(cat2)
    with pytest.raises(ValueError, match="split"):
        MVTecAD(cat2, split="val")


def test_one_class_digits() -> None:
    train_loader, test_loader = digits_one_class_dataloaders(normal_class=3, batch_size=64)
    train, test = train_loader.dataset, test_loader.dataset
    assert set(train.labels) == {0} and set(test.labels) == {0, 1}
    assert all(train.dataset.targets[i] == 3 for i in train.indices)
    assert sum(1 - y for y in test.labels) == sum(t == 3 for t in test.dataset.targets)
    images, labels = next(iter(test_loader))
    assert images.shape == (64, 3, 32, 32) and set(labels.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="digit 0-9"):
        digits_one_class_dataloaders(normal_class=10)
    with pytest.raises(UndefinedMetricError, match="single class"):  # one test digit: anomalous or not
        digits_one_class_dataloaders(normal_class=3, test_subset=1)
    with pytest.raises(ValueError, match="do not occur"):
        OneClassDataset(train.dataset, [42])
    plain = torch.utils.data.TensorDataset(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 1, 2]))  # no .targets
    one_class = OneClassDataset(plain, [1])
    assert one_class.labels == [1, 0, 0, 1] and one_class[1][1] == 0
    assert len(OneClassDataset(plain, [1], normal_only=True)) == 2


def test_one_class_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    for split, classes in (("train", ("ok", "bad")), ("test", ("ok", "bad"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 12), (40 * i, 100, 200 if c == "ok" else 0)).save(tmp_path / split / c / f"{i}.png")
    train_loader, test_loader = imagefolder_one_class_dataloaders(tmp_path / "train", tmp_path / "test", "ok", 16)
    assert len(train_loader.dataset) == 3 and sorted(test_loader.dataset.labels) == [0, 0, 0, 1, 1, 1]
    images, labels = next(iter(test_loader))
    assert images.shape[1:] == (3, 16, 16)
    with pytest.raises(ValueError, match="normal class 'cat' is not a folder"):
        imagefolder_one_class_dataloaders(tmp_path / "train", tmp_path / "test", "cat")
    for p in (tmp_path / "test" / "bad").iterdir():
        p.unlink()
    (tmp_path / "test" / "bad").rmdir()
    with pytest.raises(UndefinedMetricError, match="single class"):
        imagefolder_one_class_dataloaders(tmp_path / "train", tmp_path / "test", "ok")
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        imagefolder_one_class_dataloaders(tmp_path / "none", tmp_path / "test", "ok")


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    a = write_synthetic_mvtec(tmp_path / "a", image_size=16, num_train=2, num_test_good=1, num_test_defect=1, seed=3)
    b = write_synthetic_mvtec(tmp_path / "b", image_size=16, num_train=2, num_test_good=1, num_test_defect=1, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 + 1 + 2 * len(DEFECTS)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


# -- models -------------------------------------------------------------------------------
def test_models_registered() -> None:
    assert set(list_models()) >= set(SMALL)
    assert {get_model_info(n).task for n in SMALL} == {"anomaly_detection"}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_outputs_trace_and_gradients(name: str) -> None:
    model = get_model(name, **SMALL[name]).eval()
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(x)
    scores, maps = split_output(out)
    assert scores.shape == (3,) and bool((scores >= 0).all()) and torch.isfinite(out).all()
    assert (maps is not None) == (name == "conv_autoencoder")
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), out, rtol=1e-5, atol=1e-6)
    model.train()
    model(x).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_rotation_score_is_rotation_nll() -> None:
    model = get_model("rotation_resnet", **SMALL["rotation_resnet"]).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits = model.rotation_logits(x)
        score = model(x)
        # by hand: image b rotated by r must be classified as r
        expected = sum(torch.nn.functional.cross_entropy(model.backbone(torch.rot90(x, r, (2, 3))),
                                                         torch.full((2,), r), reduction="none") for r in range(4))
    assert logits.shape == (4, 2, 4)
    torch.testing.assert_close(score, expected)
    with pytest.raises(ValueError, match="must be square, got 32x48"):
        model(torch.rand(1, 3, 32, 48))


def test_autoencoder_map_is_reconstruction_error() -> None:
    model = get_model("conv_autoencoder", **SMALL["conv_autoencoder"]).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ((x - model.reconstruct(x)) ** 2).mean(1, keepdim=True))
    with pytest.raises(ValueError, match="must be >= 1"):
        get_model("conv_autoencoder", width=0)
    with pytest.raises(ValueError, match="multiples of 8, got 30x32"):  # three stride-2 stages
        model(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="batch of images"):
        model(torch.rand(3, 32, 32))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_weights_path(name: str, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = get_model(name, **SMALL[name]).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    x = torch.rand(1, 3, SIZE, SIZE)
    for f in ("w.pt", "w.safetensors", "ckpt.pth"):
        loaded = get_model(name, **SMALL[name], weights_path=str(tmp_path / f)).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x)), f
    wider = {k: (v * 2 if isinstance(v, int) and k != "depth" else v) for k, v in SMALL[name].items()}
    with pytest.raises(ValueError, match="does not fit"):
        get_model(name, **wider, weights_path=str(tmp_path / "w.pt"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        get_model(name, **SMALL[name], weights_path=str(tmp_path / "missing.pt"))
    torch.save(model, tmp_path / "module.pt")  # a pickled module: code, refused
    with pytest.raises(ValueError, match="weights_only=True"):
        get_model(name, **SMALL[name], weights_path=str(tmp_path / "module.pt"))


# -- manager and training -----------------------------------------------------------------
def test_manager_metric_matches_sklearn(mvtec_root: Path) -> None:
    from sklearn.metrics import roc_auc_score

    mm = get_model_manager("anomaly_detection")
    assert isinstance(mm, AnomalyModelManager) and mm.metric_name == "image AUROC"
    _, test_loader = mvtec_dataloaders(mvtec_root, "texture", image_size=SIZE, batch_size=5)
    torch.manual_seed(0)
    model = get_model("conv_autoencoder", **SMALL["conv_autoencoder"]).eval()
    scores, labels, maps, masks = [], [], [], []
    with torch.no_grad():
        for images, y, m in test_loader:
            out = model(images)
            scores.append(out.mean((1, 2, 3)))
            labels.append(y)
            maps.append(out)
            masks.append(m)
    y, s = torch.cat(labels).numpy(), torch.cat(scores).numpy()
    result = mm.evaluate(model, test_loader, "cpu")
    assert result.num_samples == len(y)
    assert result.image_auroc == pytest.approx(roc_auc_score(y, s))
    assert mm.get_model_acc(model, test_loader, "cpu") == pytest.approx(result.image_auroc)
    pixel_truth = roc_auc_score(torch.cat(masks).flatten().numpy() > 0.5, torch.cat(maps).flatten().numpy())
    assert result.pixel_auroc == pytest.approx(pixel_truth)
    rot = get_model("rotation_resnet", **SMALL["rotation_resnet"])
    assert mm.evaluate(rot, test_loader, "cpu").pixel_auroc is None  # scores only, no map
    flops, params = mm.get_model_flops_and_param(model, (1, 3, SIZE, SIZE))
    assert flops > 0 and params == sum(p.numel() for p in model.parameters())
    assert mm.get_model_latency(model, 2, (1, 3, SIZE, SIZE), "cpu") > 0
    assert mm.dummy_forward_to_gen_mid_data(rot, (2, 3, SIZE, SIZE), "cpu").shape == (2,)
    one_class = [(torch.rand(4, 3, SIZE, SIZE), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(UndefinedMetricError, match="undefined"):
        mm.get_model_acc(model, one_class, "cpu")


def test_training_lowers_the_score_of_normal_images(mvtec_root: Path) -> None:
    train_loader, test_loader = mvtec_dataloaders(mvtec_root, "texture", image_size=SIZE, batch_size=8)
    torch.manual_seed(0)
    model = get_model("conv_autoencoder", **SMALL["conv_autoencoder"])
    history = train_anomaly_model(model, train_loader, epochs=3, lr=3e-3, verbose=False)
    assert len(history) == 3 and history[-1] < history[0] and not model.training
    with pytest.raises(ValueError, match="epochs"):
        train_anomaly_model(model, train_loader, epochs=0)
    with pytest.raises(ValueError, match="no images"):
        train_anomaly_model(model, [], epochs=1, verbose=False)


# -- the whole pipeline -------------------------------------------------------------------
def _loaders(name: str, mvtec_root: Path) -> tuple[DataLoader, DataLoader]:
    if name == "conv_autoencoder":  # maps and masks: the MVTec layout
        return mvtec_dataloaders(mvtec_root, "texture", image_size=SIZE, batch_size=8)
    return digits_one_class_dataloaders(normal_class=3, batch_size=32, train_subset=64, test_subset=64)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_pipeline(name: str, mvtec_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    train_loader, test_loader = _loaders(name, mvtec_root)
    assert all(int(b[1].sum()) == 0 for b in train_loader)  # teacher and blocks see normal images only
    teacher = get_model(name, **SMALL[name])
    train_anomaly_model(teacher, train_loader, epochs=2, lr=3e-3, verbose=False)
    mm = get_model_manager("anomaly_detection")
    report = run_pipeline(teacher, mm, train_loader, test_loader, (1, 3, SIZE, SIZE), str(tmp_path),
                          sparsities=(0.0, 0.5), latency_samples=3, num_compositions=2,
                          accuracy_compositions=2, verbose=False)
    assert report.num_blocks >= 1 and 0.0 < report.coverage <= 1.0
    assert report.num_descendants == report.num_blocks
    assert 0 < report.descendant_bytes[0] <= report.descendant_bytes[1] < report.block_bytes[1]
    assert report.metric_name == "image AUROC" and 0.0 <= report.teacher_metric <= 1.0
    assert report.teacher_metric == pytest.approx(mm.get_model_acc(teacher, test_loader, "cpu"))
    assert report.live_output_ok
    chosen = report.chosen
    assert 0.0 <= chosen["estimated_metric"] <= 1.0 + 1e-9
    if chosen["feasible"]:
        assert chosen["model_bytes"] <= report.budget["max_memory_bytes"]
        assert chosen["estimated_latency_s"] <= report.budget["max_latency_s"]
    else:  # explicitly infeasible: the closest configuration is installed, and it breaks a budget
        assert chosen["model_bytes"] > report.budget["max_memory_bytes"] \
            or chosen["estimated_latency_s"] > report.budget["max_latency_s"]
    assert set(report.seconds) == {"extract", "retrain", "profile", "validate", "latency", "optimize"}
    acc = report.accuracy_error  # two measured compositions, each a metric in [0, 1]
    assert acc.n == 2 and 0.0 <= acc.measured_range[0] <= acc.measured_range[1] <= 1.0
    assert acc.used == "fitted" and acc.mean_abs_error_additive >= 0.0  # the profiler fitted the estimate
    saved = json.loads((tmp_path / "trained" / "accuracy_model.json").read_text())
    assert saved["mean_abs_error_fitted"] == pytest.approx(acc.mean_abs_error_fitted)
    assert (tmp_path / "trained" / "accuracy_estimate.json").is_file()
    assert "measured compositions" in describe(report, name)
    err = report.latency_error  # num_compositions more fit the calibration; these 2 are held out
    assert err.n == 2 and 0.0 <= err.within_10pct <= 1.0 and err.mean_abs_rel_error >= 0.0
    assert report.to_json()["latency_error"]["n"] == 2  # JSON-ready all the way down
    assert "held-out compositions within +-10%" in describe(report, name)


@pytest.mark.slow
def test_demo_quick(tmp_path: Path) -> None:
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "demos"))
    try:
        from anomaly_detection_demo import main
    finally:
        sys.path.pop(0)
    # the default data (digits, one-class) on one model, then the MVTec path on generated data
    result = main(["--out", str(tmp_path / "run"), "--quick", "--quiet", "--threads", "1", "--models", "conv_autoencoder"])
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == result
    assert "digits" in result["data"] and set(result["models"]) == {"conv_autoencoder"}
    r = result["models"]["conv_autoencoder"]
    assert r["pipeline"]["num_blocks"] >= 1 and r["pipeline"]["live_output_ok"]
    assert 0.0 <= r["teacher"]["image_auroc"] <= 1.0 and r["teacher"]["pixel_auroc"] is None
    mvtec = main(["--out", str(tmp_path / "mv"), "--quick", "--quiet", "--threads", "1", "--data", "synthetic",
                  "--models", "conv_autoencoder", "--epochs", "1", "--image-size", "16"])
    assert "generated MVTec-layout" in mvtec["data"]
    assert 0.0 <= mvtec["models"]["conv_autoencoder"]["teacher"]["pixel_auroc"] <= 1.0
