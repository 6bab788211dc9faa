"""Object detection: COCO/VOC loaders on tiny self-written data, both mAPs against hand-computed
answers, bad input, the model manager, checkpoints, and the whole pipeline on each detector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cv_tasks import get_model, get_model_info, get_model_manager, list_models
from cv_tasks.object_detection.datasets import (
    AnnotationError,
    CocoDetection,
    DatasetNotFoundError,
    RandomHorizontalFlip,
    Resize,
    VOCDetection,
    detection_collate,
    detection_dataloaders,
    detection_transforms,
)
from cv_tasks.object_detection.metrics import average_precision, coco_map, voc_map
from cv_tasks.object_detection.model_manager import DetectionModelManager
from cv_tasks.object_detection.synthetic import SYNTHETIC_CLASSES, make_synthetic_detection
from cv_tasks.pipeline import run_pipeline

SIZE = 64  # test image side: small enough that every detector runs in well under a second


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_synthetic_detection(tmp_path_factory.mktemp("det"), num_train=6, num_val=4, image_size=SIZE, seed=3)


def _t(boxes, labels, **extra) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels), **extra}


def _p(boxes, scores, labels) -> dict:
    return {**_t(boxes, labels), "scores": torch.tensor(scores)}


def _write_coco(path: Path, images: list, annotations: list, categories=((1, "a"), (2, "b"))) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i, "name": n} for i, n in categories]}))
    return path


# ---------------------------------------------------------------- data


def test_coco_and_voc_loaders_read_the_same_boxes(synth: dict) -> None:
    coco = CocoDetection(synth["images"], synth["train"], detection_transforms())
    voc = VOCDetection(synth["voc"], "train", classes=SYNTHETIC_CLASSES, transforms=detection_transforms())
    assert len(coco) == len(voc) == 6 and coco.num_classes == voc.num_classes == 3
    raw = json.loads(Path(synth["train"]).read_text())
    for i in range(len(coco)):
        (img_c, t_c), (img_v, t_v) = coco[i], voc[i]
        assert img_c.shape == (3, SIZE, SIZE) and 0.0 <= float(img_c.min()) and float(img_c.max()) <= 1.0
        torch.testing.assert_close(img_c, img_v)
        anns = [a for a in raw["annotations"] if a["image_id"] == t_c["image_id"]]
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32)
        torch.testing.assert_close(t_c["boxes"], expected)
        torch.testing.assert_close(t_v["boxes"], expected)
        assert t_c["labels"].tolist() == t_v["labels"].tolist() == [a["category_id"] for a in anns]
        assert t_v["difficult"].tolist() == [0] * len(anns)


def test_drawn_shapes_are_inside_their_boxes(synth: dict) -> None:
    """The generator's boxes are exact: the box's pixels are brighter than the noise (max 90/255)."""
    image, target = CocoDetection(synth["images"], synth["val"], detection_transforms())[0]
    x1, y1, x2, y2 = target["boxes"][-1].round().int().tolist()  # the last shape drawn is not covered
    assert float(image[:, y1:y2, x1:x2].mean()) > 2 * float(image.mean(dim=(1, 2)).min())


def test_resize_and_flip_keep_boxes_on_the_object() -> None:
    image = torch.zeros(3, 40, 80)
    image[:, 10:20, 5:25] = 1.0  # an object at x 5..25, y 10..20
    target = {"boxes": torch.tensor([[5.0, 10.0, 25.0, 20.0]]), "labels": torch.tensor([1])}
    small, t = Resize((20, 40))(image, target)
    assert small.shape == (3, 20, 40) and t["boxes"].tolist() == [[2.5, 5.0, 12.5, 10.0]]
    _, t = Resize(20)(image, target)  # shorter side 40 -> 20
    assert t["boxes"].tolist() == [[2.5, 5.0, 12.5, 10.0]]
    flipped, t = RandomHorizontalFlip(p=1.0)(image, target)
    assert t["boxes"].tolist() == [[55.0, 10.0, 75.0, 20.0]]
    assert float(flipped[:, 10:20, 55:75].min()) == 1.0 and float(flipped.sum()) == float(image.sum())
    same, t = RandomHorizontalFlip(p=0.0)(image, target)
    assert same is image and t["boxes"].tolist() == [[5.0, 10.0, 25.0, 20.0]]


def test_collate_and_loaders(synth: dict) -> None:
    train = CocoDetection(synth["images"], synth["train"], detection_transforms(train=True))
    test = CocoDetection(synth["images"], synth["val"], detection_transforms())
    tl, vl = detection_dataloaders(train, test, batch_size=4)
    images, targets = next(iter(tl))
    assert isinstance(images, list) and len(images) == len(targets) == 4
    assert sum(len(imgs) for imgs, _ in vl) == len(test) == 4 and detection_collate([]) == ([], [])


def test_coco_irregular_annotations(tmp_path: Path, synth: dict) -> None:
    """Empty image kept (empty boxes), degenerate box dropped and counted, crowd kept and flagged."""
    images = [{"id": 1, "file_name": "000001.jpg", "width": SIZE, "height": SIZE},
              {"id": 2, "file_name": "000002.jpg", "width": SIZE, "height": SIZE}]
    anns = [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [4, 4, 10, 0], "area": 0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 12], "area": 120, "iscrowd": 1}]
    ds = CocoDetection(synth["images"], _write_coco(tmp_path / "a.json", images, anns), detection_transforms())
    assert len(ds) == 2 and ds.dropped_boxes == 1
    _, t1 = ds[0]
    assert t1["boxes"].tolist() == [[4.0, 4.0, 14.0, 16.0]] and t1["iscrowd"].tolist() == [1]
    _, t2 = ds[1]
    assert t2["boxes"].shape == (0, 4) and t2["labels"].shape == (0,)
    assert len(CocoDetection(synth["images"], tmp_path / "a.json", drop_empty=True)) == 1
    assert ds.label_to_category_id(2) == 2 and ds.categories == ["a", "b"]


def test_coco_bad_input(tmp_path: Path, synth: dict) -> None:
    images = [{"id": 1, "file_name": "nope.jpg", "width": SIZE, "height": SIZE}]
    bad_cat = _write_coco(tmp_path / "c.json", images, [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2]}])
    with pytest.raises(AnnotationError, match="category_id 7"):
        CocoDetection(synth["images"], bad_cat)
    with pytest.raises(DatasetNotFoundError, match="no COCO annotation file"):
        CocoDetection(synth["images"], tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        CocoDetection(synth["images"], tmp_path / "broken.json")
    ds = CocoDetection(synth["images"], _write_coco(tmp_path / "m.json", images, []))
    with pytest.raises(DatasetNotFoundError, match="nope.jpg"):
        ds[0]
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "nope.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot decode image"):
        CocoDetection(tmp_path / "img", tmp_path / "m.json")[0]


def test_voc_bad_input(tmp_path: Path, synth: dict) -> None:
    with pytest.raises(AnnotationError, match="'rectangle' is not in classes"):
        VOCDetection(synth["voc"], "train")  # the default classes are VOC's 20
    with pytest.raises(DatasetNotFoundError, match="no image set list"):
        VOCDetection(synth["voc"], "test", classes=SYNTHETIC_CLASSES)
    root = tmp_path / "VOC"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "x.txt").write_text("a\nb\n")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>9</xmax>"
        "<ymax>8</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>5</xmin><ymin>2</ymin><xmax>5</xmax><ymax>8</ymax></bndbox></object>"
        "</annotation>")
    with pytest.raises(DatasetNotFoundError, match="b.xml"):
        VOCDetection(root, "x")
    (root / "Annotations" / "b.xml").write_text("<annotation><object><name>cat</name></object>")
    with pytest.raises(AnnotationError, match="not valid XML"):
        VOCDetection(root, "x")
    (root / "Annotations" / "b.xml").write_text("<annotation><filename>b.jpg</filename></annotation>")
    ds = VOCDetection(root, "x")
    assert ds.dropped_boxes == 1 and ds._records[0]["objects"][0]["difficult"] == 1
    assert ds._records[1]["objects"] == []


# ---------------------------------------------------------------- metrics


def test_ground_truth_as_predictions_scores_one(synth: dict) -> None:
    targets = [t for _, t in CocoDetection(synth["images"], synth["train"])]
    preds = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in targets]
    assert coco_map(preds, targets) == pytest.approx(1.0)
    assert voc_map(preds, targets) == pytest.approx(1.0)


def test_shifted_box_hand_computed() -> None:
    gt = [_t([[0, 0, 10, 10]], [1])]
    # shifted 1 px right: IoU = 90 / 110 = 0.818: a hit at thresholds .50 .. .80 (7 of 10), a miss at .85 .. .95
    shifted = [_p([[1, 0, 11, 10]], [0.9], [1])]
    assert coco_map(shifted, gt) == pytest.approx(0.7)
    assert voc_map(shifted, gt) == pytest.approx(1.0)
    # two objects; one found exactly (score .9), the other predicted 5 px off (IoU 50/150 = 1/3 < .5: FP)
    # ranked: TP (P 1, R .5), FP (P .5, R .5); all-point AP = .5 * 1 + .5 * 0 = 0.5
    gt2 = [_t([[0, 0, 10, 10], [20, 0, 30, 10]], [1, 1])]
    pred2 = [_p([[0, 0, 10, 10], [25, 0, 35, 10]], [0.9, 0.8], [1, 1])]
    assert voc_map(pred2, gt2) == pytest.approx(0.5)
    # the same with the FP ranked first: P(1 det) = 0, then TP at P .5, R .5 -> AP = .5 * .5 = 0.25
    pred3 = [_p([[0, 0, 10, 10], [25, 0, 35, 10]], [0.7, 0.8], [1, 1])]
    assert voc_map(pred3, gt2) == pytest.approx(0.25)
    # wrong class: the class with ground truth gets AP 0, the predicted class has no ground truth (ignored)
    assert voc_map([_p([[0, 0, 10, 10]], [0.9], [2])], gt) == 0.0
    assert coco_map([_p([[0, 0, 10, 10]], [0.9], [2])], gt) == 0.0


def test_voc_difficult_and_duplicates() -> None:
    gt = [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], difficult=torch.tensor([0, 1]))]
    # a detection on the difficult box is ignored; missing the difficult box costs nothing
    assert voc_map([_p([[20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])], gt) == pytest.approx(1.0)
    assert voc_map([_p([[0, 0, 10, 10]], [0.8], [1])], gt) == pytest.approx(1.0)
    # a duplicate detection of a matched box is a FP: TP (P 1, R 1) then FP -> AP still 1.0
    assert voc_map([_p([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])], gt) == pytest.approx(1.0)
    # per class: a 1 px shift (IoU .82) is still a hit at 0.5, a miss at 0.9
    mean, per_class = voc_map([_p([[1, 0, 11, 10]], [0.9], [1])], gt, per_class=True)
    assert mean == 1.0 and per_class == {1: pytest.approx(1.0)}
    assert voc_map([_p([[1, 0, 11, 10]], [0.9], [1])], gt, iou_threshold=0.9) == 0.0
    # COCO crowd boxes count as difficult: a loader's COCO targets score alike under both metrics
    crowd = [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], iscrowd=torch.tensor([0, 1]))]
    assert voc_map([_p([[20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])], crowd) == pytest.approx(1.0)
    assert voc_map([_p([[0, 0, 10, 10]], [0.8], [1])], crowd) == pytest.approx(1.0)
    assert average_precision(torch.tensor([0.5, 0.5, 1.0]), torch.tensor([1.0, 0.5, 2 / 3])) == pytest.approx(
        0.5 * 1.0 + 0.5 * (2 / 3))


def test_metric_bad_input() -> None:
    gt = [_t([[0, 0, 10, 10]], [1])]
    with pytest.raises(ValueError, match="1 predictions for 2 targets"):
        voc_map([_p([], [], [])], gt * 2)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        coco_map([{"boxes": torch.zeros(2, 5), "scores": torch.zeros(2), "labels": torch.zeros(2)}], gt)
    with pytest.raises(ValueError, match="lacks \\['scores'\\]"):
        voc_map([_t([[0, 0, 1, 1]], [1])], gt)
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        voc_map([_p([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5], [1, 1])], gt)
    with pytest.raises(ValueError, match="no .*box"):
        coco_map([_p([], [], [])], [_t([], [])])
    with pytest.raises(ValueError, match="no .*box"):
        voc_map([_p([], [], [])], [_t([], [])])
    assert coco_map([_p([], [], [])], gt) == 0.0 and voc_map([_p([], [], [])], gt) == 0.0


# ---------------------------------------------------------------- models and manager

MODELS = {  # registered name -> small options for CPU tests
    "fasterrcnn_mobilenet_v3_large_fpn": dict(representation_size=64, width_mult=0.5),
    "fasterrcnn_resnet18_fpn": dict(representation_size=64),
    "fcos_mobilenet_v3_large_fpn": dict(width_mult=0.5),
}


def _small(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_model(name, num_classes=3, min_size=SIZE, max_size=SIZE, **MODELS.get(name, {}), **kw)


def test_every_registered_detector_is_tested() -> None:
    detectors = {n for n in list_models() if get_model_info(n).task == "object_detection"}
    assert detectors == set(MODELS) | {"fasterrcnn_resnet50_fpn"}  # ResNet-50: too slow here, run in the bench


def test_manager(synth: dict) -> None:
    mm = get_model_manager("object_detection")
    assert isinstance(mm, DetectionModelManager) and mm.metric_name == "mAP@[.5:.95]"
    assert DetectionModelManager("voc").metric_name == "mAP@0.5"
    with pytest.raises(ValueError, match="unknown detection metric"):
        DetectionModelManager("ap")
    model = _small("fcos_mobilenet_v3_large_fpn").train()
    out = mm.dummy_forward_to_gen_mid_data(model, (2, 3, SIZE, SIZE), "cpu")
    assert model.training and len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        mm.dummy_forward_to_gen_mid_data(model, (3, SIZE, SIZE), "cpu")
    batch = next(iter(detection_dataloaders(CocoDetection(synth["images"], synth["val"], detection_transforms()),
                                            CocoDetection(synth["images"], synth["val"]), batch_size=3)[0]))
    assert len(mm.forward_to_gen_mid_data(model, batch, "cpu")) == 3
    flops, params = mm.get_model_flops_and_param(model, (1, 3, SIZE, SIZE))
    flops2, _ = mm.get_model_flops_and_param(model, (2, 3, SIZE, SIZE))
    assert params == sum(p.numel() for p in model.parameters()) and flops > 1e6 and flops2 > 1.9 * flops
    assert mm.get_model_latency(model, 2, (1, 3, SIZE, SIZE), "cpu") > 0
    with pytest.raises(ValueError, match="list of"):
        mm.forward_to_gen_mid_data(model, ([], []), "cpu")


def test_checkpoint_round_trip_and_mismatch(tmp_path: Path) -> None:
    model = _small("fasterrcnn_mobilenet_v3_large_fpn").eval()
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pth")
    loaded = _small("fasterrcnn_mobilenet_v3_large_fpn", weights_path=str(tmp_path / "ckpt.pth")).eval()
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not fit.*shape mismatches"):
        get_model("fasterrcnn_mobilenet_v3_large_fpn", num_classes=5, min_size=SIZE, max_size=SIZE,
                  weights_path=str(tmp_path / "ckpt.pth"), **MODELS["fasterrcnn_mobilenet_v3_large_fpn"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _small("fcos_mobilenet_v3_large_fpn", weights_path=str(tmp_path / "none.pth"))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled module refers to code: refused
    with pytest.raises(ValueError, match="weights_only=True"):
        _small("fcos_mobilenet_v3_large_fpn", weights_path=str(tmp_path / "module.pth"))
    from safetensors.torch import save_file

    fcos = _small("fcos_mobilenet_v3_large_fpn")
    save_file({k: v.contiguous() for k, v in fcos.state_dict().items()}, str(tmp_path / "fcos.safetensors"))
    again = _small("fcos_mobilenet_v3_large_fpn", weights_path=str(tmp_path / "fcos.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(fcos.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="num_classes counts the background"):
        get_model("fcos_mobilenet_v3_large_fpn", num_classes=1)


def test_resnet50_builds_at_its_standard_size() -> None:
    model = get_model("fasterrcnn_resnet50_fpn", num_classes=3)
    assert model.transform.min_size == (800,) and 41e6 < sum(p.numel() for p in model.parameters()) < 42e6


def _check_report(report, metric_name: str) -> None:
    """What every pipeline run here must show; it ran with sparsities (0.0, 0.5)."""
    assert report.num_blocks >= 1 and 0.0 < report.coverage <= 1.0
    assert report.metric_name == metric_name and 0.0 <= report.teacher_metric <= 1.0
    assert report.num_descendants == report.num_blocks  # one pruned descendant (0.5) per block
    assert 0 < report.descendant_bytes[0] <= report.descendant_bytes[1] < report.block_bytes[1]
    assert report.live_output_ok and set(report.seconds) == {"extract", "retrain", "profile", "latency", "optimize"}
    c = report.chosen
    if c["feasible"]:
        assert c["model_bytes"] <= report.budget["max_memory_bytes"]
        assert c["estimated_latency_s"] <= report.budget["max_latency_s"]
    else:  # explicitly infeasible: the closest configuration is installed, and it breaks a budget
        # (not necessarily all 0.5: on a busy machine a pruned block can time slower than its original)
        assert c["model_bytes"] > report.budget["max_memory_bytes"] \
            or c["estimated_latency_s"] > report.budget["max_latency_s"]


# FCOS runs the pipeline in test_demo_quick (the demo's --quick model), so it is not repeated here
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(MODELS) - {"fcos_mobilenet_v3_large_fpn"}))
def test_pipeline(name: str, synth: dict, tmp_path: Path) -> None:
    train = CocoDetection(synth["images"], synth["train"], detection_transforms(train=True))
    test = CocoDetection(synth["images"], synth["val"], detection_transforms())
    tl, vl = detection_dataloaders(train, test, batch_size=2, train_subset=4, test_subset=2)
    report = run_pipeline(_small(name), DetectionModelManager("voc"), tl, vl, (1, 3, SIZE, SIZE), str(tmp_path),
                          sparsities=(0.0, 0.5), block_size_ratio=0.25, latency_samples=2, num_compositions=2,
                          verbose=False)
    _check_report(report, "mAP@0.5")


@pytest.mark.slow
def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("od_demo", Path(__file__).parents[1] / "demos" / "object_detection_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    results = demo.main(["--quick", "--quiet", "--epochs", "1", "--out", str(tmp_path), "--threads", "1"])
    assert capsys.readouterr().out == ""  # --quiet
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metric"] == "mAP@0.5" and "synthetic" in saved["data"]
    (model,) = results["models"]
    assert model["model"] == "fcos_mobilenet_v3_large_fpn"
    assert all(0.0 <= v <= 1.0 for v in model["teacher_metrics"].values())
    from cv_tasks.pipeline import PipelineReport

    _check_report(PipelineReport(**model["pipeline"]), "mAP@0.5")
    with pytest.raises(ValueError, match="not a registered model of task .object_detection."):
        demo.main(["--quiet", "--models", "cifar_resnet18", "--out", str(tmp_path)])
