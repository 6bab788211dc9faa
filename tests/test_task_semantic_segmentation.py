"""Semantic segmentation: data in the VOC and COCO layouts, mIoU, models, manager, pipeline, demo.

All data is written here, in the standard on-disk formats, under ``tmp_path``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import cv_tasks
from cv_tasks.pipeline import run_pipeline
from cv_tasks.registry import get_model_manager, list_models
from cv_tasks.semantic_segmentation.datasets import (
    COCOSegmentation,
    DatasetNotFoundError,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    SegmentationDataError,
    VOCSegmentation,
    segmentation_collate,
    voc_dataloaders,
    write_label_png,
)
from cv_tasks.semantic_segmentation.metrics import ConfusionMatrix, MeanIoU, segmentation_scores
from cv_tasks.semantic_segmentation.model_manager import SegmentationModelManager
from cv_tasks.semantic_segmentation.synthetic import write_synthetic_voc

TASK = "semantic_segmentation"
#: CPU-test variants of every registered segmenter: same design, few channels and layers
SMALL: Dict[str, Dict[str, Any]] = {
    "tiny_encoder_decoder": {"width": 8},
    "fcn_resnet50": {"width": 8, "layers": (1, 1, 1, 1)},
    "deeplabv3_resnet50": {"width": 8, "layers": (1, 1, 1, 1)},
    "deeplabv3_mobilenet_v3_large": {"width_mult": 0.25},
    "lraspp_mobilenet_v3_large": {"width_mult": 0.25},
}
TORCHVISION_TWINS = ("fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_registered_segmenter_has_a_small_variant() -> None:
    registered = {n for n in list_models() if cv_tasks.get_model_info(n).task == TASK}
    assert registered == set(SMALL)


# -- metric: known answers ------------------------------------------------------------
def _halves() -> torch.Tensor:
    """4x4 ground truth: left half class 0 (8 px), right half class 1 (8 px)."""
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    gt[..., 2:] = 1
    return gt


def test_ground_truth_as_prediction_is_perfect() -> None:
    gt = _halves()
    gt[0, 0, 0] = 255  # void is skipped, whatever is predicted there
    s = segmentation_scores(gt.clamp(max=1), gt, num_classes=3)
    assert s.miou == 1.0 and s.pixel_accuracy == 1.0
    assert s.iou == [1.0, 1.0, None]  # class 2 is in neither: no IoU, not in the mean
    assert s.num_pixels == 15


def test_corrupted_region_hand_computed() -> None:
    gt = _halves()
    pred = gt.clone()
    pred[0, 0:2, 2:4] = 0  # a 2x2 region of class 1 predicted as class 0
    # confusion: 0->0: 8, 1->1: 4, 1->0: 4
    # IoU0 = 8 / (8 + 12 - 8) = 2/3; IoU1 = 4 / (8 + 4 - 4) = 1/2; mIoU = 7/12; acc = 12/16
    s = segmentation_scores(pred, gt, num_classes=3)
    assert s.iou[0] == pytest.approx(2 / 3) and s.iou[1] == pytest.approx(0.5) and s.iou[2] is None
    assert s.miou == pytest.approx(7 / 12)
    assert s.pixel_accuracy == pytest.approx(0.75)

    # one of the wrong pixels marked void: 0->0: 8, 1->1: 4, 1->0: 3 over 15 pixels
    # IoU0 = 8 / (8 + 11 - 8) = 8/11; IoU1 = 4 / (7 + 4 - 4) = 4/7; acc = 12/15
    gt[0, 0, 2] = 255
    s = segmentation_scores(pred, gt, num_classes=3)
    assert s.miou == pytest.approx((8 / 11 + 4 / 7) / 2)
    assert s.pixel_accuracy == pytest.approx(0.8)


def test_predicting_an_absent_class_counts_against_the_mean() -> None:
    gt = _halves()
    pred = gt.clone()
    pred[0, 0, 0] = 2  # class 2 is not in the ground truth: IoU2 = 0 / 1 = 0
    # IoU0 = 7 / 8, IoU1 = 1, IoU2 = 0
    s = segmentation_scores(pred, gt, num_classes=3)
    assert s.iou == [pytest.approx(7 / 8), 1.0, 0.0]
    assert s.miou == pytest.approx((7 / 8 + 1) / 3)


def test_confusion_matrix_is_independent_of_batching() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 4, (6, 8, 8), generator=g)
    pred = torch.where(torch.rand(6, 8, 8, generator=g) < 0.3, torch.randint(0, 4, (6, 8, 8), generator=g), gt)
    whole = segmentation_scores(pred, gt, 4)
    cm = ConfusionMatrix(4)
    for i in range(0, 6, 2):
        cm.update(pred[i : i + 2], gt[i : i + 2])
    assert cm.compute() == whole
    assert 0.0 < whole.miou < 1.0


@pytest.mark.parametrize(
    "pred, gt, match",
    [
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long), "shape"),
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 7), r"labels \[7\]"),
        (torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), "integer class ids"),
    ],
)
def test_metric_rejects_bad_input(pred: torch.Tensor, gt: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        segmentation_scores(pred, gt, num_classes=3)


def test_metric_without_pixels_raises() -> None:
    with pytest.raises(ValueError, match="no labelled pixels"):
        ConfusionMatrix(3).compute()
    with pytest.raises(ValueError, match="no batches"):
        MeanIoU().compute()


# -- VOC layout -------------------------------------------------------------------------
@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return write_synthetic_voc(tmp_path / "voc", num_train=4, num_val=2, size=32, num_classes=4, seed=1)


def test_synthetic_voc_reads_back_through_the_voc_loader(voc: Path, tmp_path: Path) -> None:
    assert (voc / "ImageSets" / "Segmentation" / "train.txt").is_file()
    assert Image.open(next((voc / "SegmentationClass").glob("*.png"))).mode == "P"
    train, val = VOCSegmentation(voc.parent, "train", 4), VOCSegmentation(voc.parent, "val", 4)
    assert (len(train), len(val)) == (4, 2)
    image, mask = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    labels = set(torch.cat([train[i][1].flatten() for i in range(4)]).unique().tolist())
    assert labels <= {0, 1, 2, 3, 255} and 255 in labels and len(labels - {0, 255}) >= 1
    again = write_synthetic_voc(tmp_path / "again", num_train=4, num_val=2, size=32, num_classes=4, seed=1)
    assert torch.equal(VOCSegmentation(again, "train", 4)[3][1], train[3][1])  # deterministic per seed


def test_voc_dataloaders_batch(voc: Path) -> None:
    train, val = voc_dataloaders(voc, batch_size=2, size=24, num_classes=4)
    images, masks = next(iter(train))
    assert images.shape == (2, 3, 24, 24) and masks.shape == (2, 24, 24) and masks.dtype == torch.int64
    images, masks = next(iter(val))
    assert set(masks.unique().tolist()) <= {0, 1, 2, 3, 255}


def test_voc_mask_of_wrong_size_names_file_and_sizes(voc: Path) -> None:
    image_id = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    write_label_png(voc / "SegmentationClass" / f"{image_id}.png", np.zeros((10, 12), dtype=np.uint8))
    with pytest.raises(SegmentationDataError, match=rf"{image_id}\.png is 12x10 .* image is 32x32"):
        VOCSegmentation(voc, "train", 4)[0]


def test_voc_label_beyond_num_classes_is_refused(voc: Path) -> None:
    image_id = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    labels = np.zeros((32, 32), dtype=np.uint8)
    labels[0, :3] = (7, 255, 3)  # 255 (void) and 3 are fine with 4 classes; 7 is not
    write_label_png(voc / "SegmentationClass" / f"{image_id}.png", labels)
    with pytest.raises(SegmentationDataError, match=rf"{image_id}\.png has labels \[7\] >= num_classes=4"):
        VOCSegmentation(voc, "train", 4)[0]
    assert VOCSegmentation(voc, "train", 8)[0][1][0, :3].tolist() == [7, 255, 3]


def test_voc_rgb_mask_and_corrupt_image_are_refused(voc: Path) -> None:
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    Image.new("RGB", (32, 32), (128, 0, 0)).save(voc / "SegmentationClass" / f"{ids[0]}.png")
    with pytest.raises(SegmentationDataError, match="palette"):
        VOCSegmentation(voc, "train", 4)[0]
    (voc / "JPEGImages" / f"{ids[1]}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SegmentationDataError, match=rf"{ids[1]}\.jpg"):
        VOCSegmentation(voc, "train", 4)[1]


def test_voc_missing_parts(voc: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="JPEGImages"):
        VOCSegmentation(tmp_path / "nothing", "train")
    with pytest.raises(DatasetNotFoundError, match="test.txt"):
        VOCSegmentation(voc, "test")
    image_id = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    (voc / "SegmentationClass" / f"{image_id}.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=image_id):
        VOCSegmentation(voc, "val")


# -- joint transforms and batching ----------------------------------------------------
def test_crop_and_flip_move_image_and_mask_together() -> None:
    mask = torch.arange(48).reshape(6, 8) % 5
    image = mask.float().expand(3, 6, 8).clone()  # the image shows its own labels
    for seed in range(6):
        torch.manual_seed(seed)
        img, m = RandomHorizontalFlip(0.5)(*RandomCrop((4, 5))(image, mask))
        assert m.shape == (4, 5) and torch.equal(img[0].long(), m)


def test_resize_uses_nearest_for_masks() -> None:
    mask = torch.tensor([[0, 1], [2, 255]])
    _, m = Resize(4)(torch.rand(3, 2, 2), mask)
    assert torch.equal(m, mask.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_crop_pads_masks_with_void_and_collate_pads_batches() -> None:
    image, mask = RandomCrop(6)(torch.ones(3, 4, 4), torch.zeros(4, 4, dtype=torch.long))
    assert image.shape == (3, 6, 6) and int((mask == 255).sum()) == 36 - 16 and float(image.sum()) == 3 * 16
    images, masks = segmentation_collate([(torch.ones(3, 4, 4), torch.ones(4, 4, dtype=torch.long)),
                                          (torch.ones(3, 6, 5), torch.zeros(6, 5, dtype=torch.long))])
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert int((masks[0] == 255).sum()) == 30 - 16 and float(images[0].sum()) == 3 * 16
    with pytest.raises(ValueError, match="differ in size"):
        segmentation_collate([(torch.ones(3, 4, 4), torch.ones(5, 4, dtype=torch.long))])


# -- COCO masks ---------------------------------------------------------------------------
def _rle(mask: np.ndarray, compressed: bool) -> Dict[str, Any]:
    """COCO RLE of a binary mask: pycocotools' compressed string, or plain column-major runs."""
    if compressed:
        from pycocotools import mask as mask_utils

        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    flat = mask.flatten(order="F").astype(np.int64)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def _box(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[rows, cols] = True
    return m


def _write_coco(root: Path, anns: List[Dict[str, Any]] | None = None, a_size=(40, 30)) -> tuple:
    """Two images: a.jpg (40x30) with a polygon, two RLE objects and a crowd; b.jpg (20x20) empty."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", a_size, (90, 120, 150)).save(root / "images" / "a.jpg")
    Image.new("RGB", (20, 20), (10, 20, 30)).save(root / "images" / "b.jpg")
    h, w = 30, 40
    if anns is None:
        anns = [
            {"id": 10, "image_id": 1, "category_id": 5, "iscrowd": 0, "area": 70.0, "bbox": [2, 3, 10, 7],
             "segmentation": [[2, 3, 12, 3, 12, 10, 2, 10]]},  # polygon, rows 3..10, cols 2..12
            {"id": 11, "image_id": 1, "category_id": 17, "iscrowd": 0, "area": 66.0, "bbox": [20, 15, 11, 6],
             "segmentation": _rle(_box(h, w, slice(15, 21), slice(20, 31)), compressed=True)},
            {"id": 12, "image_id": 1, "category_id": 5, "iscrowd": 1, "area": 15.0, "bbox": [0, 25, 5, 3],
             "segmentation": _rle(_box(h, w, slice(25, 28), slice(0, 5)), compressed=False)},
            {"id": 13, "image_id": 1, "category_id": 17, "iscrowd": 0, "area": 4.0, "bbox": [5, 5, 2, 2],
             "segmentation": _rle(_box(h, w, slice(5, 7), slice(5, 7)), compressed=True)},  # on top of id 10
        ]
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w},
                   {"id": 2, "file_name": "b.jpg", "height": 20, "width": 20}],
        "annotations": anns,
        "categories": [{"id": 5, "name": "cat"}, {"id": 17, "name": "dog"}, {"id": 30, "name": "kite"}],
    }
    (root / "instances.json").write_text(json.dumps(doc))
    return root / "images", root / "instances.json"


def test_coco_masks_polygons_rle_crowd_and_empty_images(tmp_path: Path) -> None:
    ds = COCOSegmentation(*_write_coco(tmp_path))
    assert ds.num_classes == 4 and ds.class_names == ["background", "cat", "dog", "kite"]
    assert ds.label_of_category == {5: 1, 17: 2, 30: 3}
    image, mask = ds[0]
    assert image.shape == (3, 30, 40) and mask.shape == (30, 40)
    assert mask[4, 3] == 1 and mask[9, 11] == 1  # inside the polygon
    assert torch.all(mask[15:21, 20:31] == 2) and int((mask == 2).sum()) == 66 + 4  # RLE, exact
    assert torch.all(mask[5:7, 5:7] == 2)  # the small object stays on top of the big one
    assert torch.all(mask[25:28, 0:5] == 255) and int((mask == 255).sum()) == 15  # crowd -> void
    assert mask[0, 39] == 0 and mask[29, 39] == 0
    _, empty = ds[1]
    assert empty.shape == (20, 20) and int(empty.abs().sum()) == 0  # no annotations: all background
    assert len(COCOSegmentation(*_write_coco(tmp_path), skip_empty=True)) == 1
    only_dogs = COCOSegmentation(*_write_coco(tmp_path), categories=[17])
    dog_mask = only_dogs.load_mask(0)
    assert only_dogs.num_classes == 2 and set(dog_mask.unique().tolist()) == {0, 1}  # cats and the crowd dropped
    for i in range(len(ds)):  # ground truth as prediction, through the loader
        m = ds.load_mask(i)
        assert segmentation_scores(m.clamp(max=3), m, ds.num_classes).miou == 1.0


def test_coco_unknown_category_and_undefined_category(tmp_path: Path) -> None:
    files = _write_coco(tmp_path)
    with pytest.raises(ValueError, match=r"category ids \[99\] are not in"):
        COCOSegmentation(*files, categories=[5, 99])
    bad = [{"id": 1, "image_id": 1, "category_id": 42, "iscrowd": 0, "area": 4.0, "bbox": [0, 0, 2, 2],
            "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}]
    with pytest.raises(SegmentationDataError, match="annotation 1 .* category_id 42"):
        COCOSegmentation(*_write_coco(tmp_path / "bad", bad))


def test_coco_sizes_that_disagree_are_refused(tmp_path: Path) -> None:
    ds = COCOSegmentation(*_write_coco(tmp_path, a_size=(41, 30)))
    with pytest.raises(SegmentationDataError, match=r"a\.jpg is 41x30 .* says 40x30"):
        ds[0]
    rle = _rle(np.ones((10, 10), dtype=bool), compressed=True)
    anns = [{"id": 3, "image_id": 1, "category_id": 5, "iscrowd": 0, "area": 100.0, "bbox": [0, 0, 10, 10],
             "segmentation": rle}]
    with pytest.raises(SegmentationDataError, match=r"annotation 3 .* RLE mask is \[10, 10\]"):
        COCOSegmentation(*_write_coco(tmp_path / "rle", anns)).load_mask(0)
    with pytest.raises(DatasetNotFoundError):
        COCOSegmentation(tmp_path / "images", tmp_path / "missing.json")


# -- models ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_variants_return_logits_at_the_input_size(name: str) -> None:
    model = cv_tasks.get_model(name, num_classes=3, **SMALL[name]).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 48, 40))
    assert out.shape == (2, 3, 48, 40) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", TORCHVISION_TWINS)
def test_defaults_match_torchvision_so_its_checkpoints_load(name: str, tmp_path: Path) -> None:
    import torchvision.models.segmentation as tvs

    ours = cv_tasks.get_model(name, num_classes=5)
    kwargs = {} if name.startswith("lraspp") else {"aux_loss": True}
    theirs = getattr(tvs, name)(weights=None, weights_backbone=None, num_classes=5, **kwargs).eval()
    state = theirs.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in state.items() if not k.startswith("aux_classifier.")}
    if name.startswith("lraspp"):  # the cheap one: same output as torchvision's "out"
        torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pth")  # torchvision reference layout
        loaded = cv_tasks.get_model(name, num_classes=5, weights_path=str(tmp_path / "ckpt.pth")).eval()
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), theirs(x)["out"])


def test_weights_path_round_trip_and_errors(tmp_path: Path) -> None:
    name, kw = "deeplabv3_resnet50", SMALL["deeplabv3_resnet50"]
    model = cv_tasks.get_model(name, num_classes=3, **kw).eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as DataParallel saves it
    state["aux_classifier.4.weight"] = torch.zeros(3, 8, 1, 1)  # torchvision's aux head: skipped
    torch.save(state, tmp_path / "w.pt")
    loaded = cv_tasks.get_model(name, num_classes=3, weights_path=str(tmp_path / "w.pt"), **kw).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match=r"shape mismatches: classifier\.4\.weight"):
        cv_tasks.get_model(name, num_classes=4, weights_path=str(tmp_path / "w.pt"), **kw)
    torch.save(model, tmp_path / "pickled_module.pt")
    with pytest.raises(ValueError, match="weights_only"):
        cv_tasks.get_model(name, num_classes=3, weights_path=str(tmp_path / "pickled_module.pt"), **kw)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        cv_tasks.get_model("tiny_encoder_decoder", weights_path=str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="num_classes"):
        cv_tasks.get_model("fcn_resnet50", num_classes=1, **SMALL["fcn_resnet50"])


# -- model manager -------------------------------------------------------------------------
class _Oracle(nn.Module):
    """Reads the labels the test wrote into channel 0 of the image; ``shift`` mislabels class 1 as 0."""

    def __init__(self, num_classes: int, shift: bool = False, as_dict: bool = False) -> None:
        super().__init__()
        self.num_classes, self.shift, self.as_dict = num_classes, shift, as_dict
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> Any:
        labels = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        if self.shift:
            labels = torch.where(labels == 1, torch.zeros_like(labels), labels)
        logits = F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float() * self.scale
        return {"out": logits, "aux": logits} if self.as_dict else logits


def _oracle_batches() -> List[tuple]:
    masks = _halves().repeat(2, 1, 1)  # two 4x4 images: left class 0, right class 1
    masks[1, 0, 0] = 255
    images = masks.clamp(max=2).float()[:, None].expand(-1, 3, -1, -1).contiguous()
    return [(images[:1], masks[:1]), (images[1:], masks[1:])]


def test_manager_scores_mean_iou() -> None:
    mm = get_model_manager(TASK)
    assert isinstance(mm, SegmentationModelManager) and mm.metric_name == "mIoU"
    batches = _oracle_batches()
    assert mm.get_model_acc(_Oracle(3), batches, "cpu") == 1.0
    assert mm.get_model_acc(_Oracle(3, as_dict=True), batches, "cpu") == 1.0  # torchvision's dict output
    # class 1 predicted as 0 everywhere: 0->0: 16 - 1 void = 15, 1->0: 16
    # IoU0 = 15 / 31, IoU1 = 0 / 16 = 0 -> mIoU 15/62; pixel accuracy 15/31
    scores = mm.evaluate(_Oracle(3, shift=True), batches, "cpu")
    assert scores.miou == pytest.approx(15 / 62) and scores.pixel_accuracy == pytest.approx(15 / 31)
    with pytest.raises(ValueError, match="do not match logits"):
        mm.get_model_acc(_Oracle(3), [(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long))], "cpu")


def test_manager_measures_a_segmenter() -> None:
    mm = SegmentationModelManager()
    model = cv_tasks.get_model("lraspp_mobilenet_v3_large", num_classes=3, **SMALL["lraspp_mobilenet_v3_large"])
    out = mm.dummy_forward_to_gen_mid_data(model, (1, 3, 32, 32), "cpu")
    assert out.shape == (1, 3, 32, 32)
    flops, params = mm.get_model_flops_and_param(model, (1, 3, 32, 32))
    assert flops > 0 and params == sum(p.numel() for p in model.parameters())
    assert mm.get_model_latency(model, 2, (1, 3, 32, 32), "cpu", warmup_num=1) > 0


# -- the whole pipeline, on each model family ----------------------------------------------
@pytest.fixture(scope="module")
def loaders(tmp_path_factory: pytest.TempPathFactory):
    root = write_synthetic_voc(tmp_path_factory.mktemp("seg_data"), num_train=4, num_val=2, size=32, num_classes=4)
    return voc_dataloaders(root, batch_size=4, size=32, num_classes=4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_pipeline_runs_on_every_segmenter(name: str, loaders, tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = cv_tasks.get_model(name, num_classes=4, **SMALL[name]).eval()
    train, test = loaders
    sparsities = (0.0, 0.5)
    report = run_pipeline(teacher, SegmentationModelManager(), train, test, (1, 3, 32, 32), str(tmp_path),
                          sparsities=sparsities, block_size_ratio=0.3, latency_samples=2, num_compositions=2,
                          verbose=False)
    assert report.metric_name == "mIoU" and 0.0 <= report.teacher_metric <= 1.0
    assert report.num_blocks >= 1 and 0.0 < report.coverage <= 1.0
    assert report.num_descendants == report.num_blocks * (len(sparsities) - 1)
    assert report.descendant_bytes[0] < report.block_bytes[0] and report.descendant_bytes[1] < report.block_bytes[1]
    assert report.live_output_ok
    chosen = report.chosen
    assert len(chosen["sparsities"]) == report.num_blocks and set(chosen["sparsities"]) <= set(sparsities)
    assert isinstance(chosen["feasible"], bool)
    if chosen["feasible"]:
        assert chosen["estimated_latency_s"] <= report.budget["max_latency_s"]
        assert chosen["model_bytes"] <= report.budget["max_memory_bytes"]
    assert set(report.seconds) == {"extract", "retrain", "profile", "latency", "optimize"}


@pytest.mark.slow
def test_demo_quick_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "demos" / "semantic_segmentation_demo.py"
    spec = importlib.util.spec_from_file_location("demos_semantic_segmentation_demo", path)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, demo)  # dataclasses look their module up there
    spec.loader.exec_module(demo)
    results = demo.main(["--quick", "--quiet", "--model", "tiny_encoder_decoder", "--out", str(tmp_path)])
    assert "synthetic" in results["data"] and results["classes"][0] == "background"
    assert 0.0 <= results["teacher"]["miou"] <= 1.0 and len(results["teacher"]["loss_per_epoch"]) == 2
    assert results["pipeline"]["num_blocks"] >= 1 and results["pipeline"]["live_output_ok"]
    assert json.loads((tmp_path / "results.json").read_text())["model"] == "tiny_encoder_decoder"
    assert (tmp_path / "teacher.pt").is_file() and (tmp_path / "data" / "VOC2012" / "JPEGImages").is_dir()
