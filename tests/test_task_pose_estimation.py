"""Pose estimation: loaders on self-written COCO/MPII files, crops, heatmaps, metrics with
known answers, bad input, the model manager, and the whole pipeline on each model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cv_tasks import get_model, get_model_info, get_model_manager, list_models
from cv_tasks.pipeline import run_pipeline
from cv_tasks.pose_estimation.datasets import (
    CorruptImageError,
    DatasetNotFoundError,
    PoseAnnotationError,
    load_pose_dataset,
    make_pose_loader,
    read_mpii_json,
    write_synthetic_pose_set,
)
from cv_tasks.pose_estimation.heatmaps import decode_heatmaps, encode_heatmaps
from cv_tasks.pose_estimation.keypoints import COCO_LAYOUT
from cv_tasks.pose_estimation.metrics import keypoint_ap, pck
from cv_tasks.pose_estimation.model_manager import PoseModelManager
from cv_tasks.pose_estimation.transforms import (
    apply_affine,
    crop_affine,
    flip_joints,
    invert_affine,
    warp_image,
)

SIZE = (64, 64)
SMALL = {
    "simple_baseline_resnet": {"base_width": 8, "head_width": 16},
    "deeppose_resnet": {"base_width": 8},
    "keypoint_rcnn_resnet_fpn": {"depth": 18, "base_width": 8, "fpn_width": 16, "box_head_width": 32, "head_width": 16,
                                 "head_layers": 2, "min_size": 64, "max_size": 64, "rpn_pre_nms_top_n_test": 100,
                                 "rpn_post_nms_top_n_test": 20, "detections_per_img": 2},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic_pose_set(str(tmp_path_factory.mktemp("pose")), num_images=6, image_size=96, seed=0)


@pytest.fixture(scope="module")
def coco_loader(synth):
    return make_pose_loader(load_pose_dataset("coco", synth.coco_json, synth.image_dir, input_size=SIZE), 3)


def test_pose_models_registered():
    names = list_models("*")
    for name in SMALL:
        assert name in names and get_model_info(name).task == "pose_estimation"
    assert isinstance(get_model_manager("pose_estimation"), PoseModelManager)


def test_model_output_forms():
    x = torch.rand(2, 3, *SIZE)
    assert get_model("simple_baseline_resnet", **SMALL["simple_baseline_resnet"])(x).shape == (2, 17, 16, 16)
    assert get_model("deeppose_resnet", num_joints=16, **SMALL["deeppose_resnet"])(x).shape == (2, 16, 2)
    out = get_model("keypoint_rcnn_resnet_fpn", **SMALL["keypoint_rcnn_resnet_fpn"]).eval()(x)
    assert len(out) == 2 and out[0]["keypoints"].shape[1:] == (17, 3)


def test_weights_path_roundtrip_and_mismatch(tmp_path):
    model = get_model("deeppose_resnet", **SMALL["deeppose_resnet"]).eval()
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    again = get_model("deeppose_resnet", weights_path=str(path), **SMALL["deeppose_resnet"]).eval()
    x = torch.rand(1, 3, *SIZE)
    assert torch.equal(model(x), again(x))
    with pytest.raises(ValueError, match="does not fit"):
        get_model("deeppose_resnet", base_width=16, weights_path=str(path))
    with pytest.raises(FileNotFoundError):
        get_model("deeppose_resnet", weights_path=str(tmp_path / "none.pt"))


def test_weights_without_batchnorm_counters_load(tmp_path):
    # torchvision's released detection weights (FrozenBatchNorm2d) carry no num_batches_tracked
    model = get_model("deeppose_resnet", **SMALL["deeppose_resnet"]).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "frozen.pt")
    again = get_model("deeppose_resnet", weights_path=str(tmp_path / "frozen.pt"), **SMALL["deeppose_resnet"])
    x = torch.rand(1, 3, *SIZE)
    assert torch.equal(model(x), again.eval()(x))
    del state[next(k for k in state if k.endswith("running_mean"))]
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="missing"):
        get_model("deeppose_resnet", weights_path=str(tmp_path / "short.pt"), **SMALL["deeppose_resnet"])


def test_coco_loader_crops_and_targets(synth):
    ds = load_pose_dataset("coco", synth.coco_json, synth.image_dir, input_size=SIZE)
    assert len(ds) == 6 and ds.skipped == 0
    x, maps, weight, meta = ds[0]
    assert x.shape == (3, 64, 64) and maps.shape == (17, 16, 16) and weight.shape == (17,)
    # each labelled joint's heatmap peaks where the crop joint is (1 heatmap pixel = 4 crop pixels)
    crop = meta["crop_joints"] * torch.tensor([64.0, 64.0])
    coords, _ = decode_heatmaps(maps[None])
    on = weight > 0
    assert on.sum() >= 10
    assert torch.allclose(coords[0][on] * 4, crop[on].float(), atol=2.0)
    # the inverse affine takes crop joints back to the annotated image joints
    back = apply_affine(crop.numpy(), meta["inverse"].numpy())
    vis = meta["visible"].numpy() > 0
    assert np.allclose(back[vis], meta["joints"].numpy()[vis], atol=1e-6)


def test_training_crops_flip_swaps_joints():
    center, size = (50.0, 40.0), (40.0, 40.0)
    joints = np.array([[30.0, 30.0], [70.0, 30.0], [50.0, 60.0]])  # a "left", a "right", a middle joint
    plain = apply_affine(joints, crop_affine(center, size, (32, 32)))
    m = crop_affine(center, size, (32, 32), flip=True)
    flipped = flip_joints(apply_affine(joints, m), (1, 0, 2))
    # after the swap, the "left" joint sits where the plain crop's right one is, mirrored
    assert np.allclose(flipped[0], [31 - plain[1][0], plain[1][1]])
    assert np.allclose(flipped[2], [31 - plain[2][0], plain[2][1]])
    assert np.allclose(apply_affine(apply_affine(joints, m), invert_affine(m)), joints)
    # the image moves with its keypoints: a bright dot lands where its keypoint maps to
    image = np.zeros((100, 100, 3), np.uint8)
    image[30, 70] = 255
    r = crop_affine(center, size, (32, 32), rotation=30, flip=True)
    crop = warp_image(image, r, (32, 32))
    y, x = np.unravel_index(crop[:, :, 0].argmax(), crop.shape[:2])
    assert np.allclose(apply_affine(np.array([70.0, 30.0]), r), [x, y], atol=1.0)
    assert COCO_LAYOUT.flip_permutation()[9] == 10  # left wrist <-> right wrist


def test_heatmap_encode_decode():
    joints = np.array([[8.0, 4.0], [9.2 * 4, 5.0 * 4], [0.0, 0.0]])
    maps, weights = encode_heatmaps(joints, np.array([2, 1, 0]), (16, 16), stride=4, sigma=2.0)
    assert weights.tolist() == [1.0, 1.0, 0.0] and maps[2].max() == 0
    coords, scores = decode_heatmaps(torch.from_numpy(maps)[None])
    assert coords[0, 0].tolist() == [2.0, 1.0] and math.isclose(float(scores[0, 0]), 1.0)
    # peak at x = 9.2 -> argmax 9, moved a quarter toward the higher neighbour: 9.25
    assert coords[0, 1].tolist() == [9.25, 5.0]
    outside, w_out = encode_heatmaps(np.array([[100.0, 4.0]]), np.array([2]), (16, 16), 4)
    assert w_out[0] == 0 and outside.max() == 0


def test_pck_known_answers():
    gt = torch.rand(2, 17, 2) * 100
    vis = torch.ones(2, 17)
    norm = torch.tensor([10.0, 10.0])
    assert pck(gt.clone(), gt, vis, norm, 0.5) == 1.0
    moved = gt.clone()
    moved[0, 3, 0] += 5.1  # past 0.5 x 10 px: 33 of 34 joints correct
    assert pck(moved, gt, vis, norm, 0.5) == pytest.approx(33 / 34)
    moved[0, 4, 1] += 4.9  # within the threshold: still counted correct
    assert pck(moved, gt, vis, norm, 0.5) == pytest.approx(33 / 34)
    vis[0, 3] = 0  # the wrong joint is unlabelled: it no longer counts
    assert pck(moved, gt, vis, norm, 0.5) == 1.0
    one = gt[:1].clone()
    one[0, 0] += 100
    assert pck(one, gt[:1], torch.ones(1, 17), norm[:1], 0.5) == pytest.approx(16 / 17)  # (K-1)/K


def test_keypoint_ap_known_answers():
    rng = np.random.default_rng(0)
    people = [{"image_id": 1, "joints": rng.uniform(10, 90, (17, 2)), "visible": np.full(17, 2),
               "area": 5000.0, "box": [10, 10, 80, 80]} for _ in range(2)]
    perfect = [{"image_id": 1, "joints": p["joints"], "score": 0.9} for p in people]
    assert keypoint_ap(people, perfect) == pytest.approx(1.0)
    # the second person predicted far off (OKS ~ 0) with a lower score: precision 1 up to
    # recall 0.5, none beyond, at every OKS threshold -> 51 of COCO's 101 recall points
    wrong = [perfect[0], {"image_id": 1, "joints": people[1]["joints"] + 60, "score": 0.5}]
    assert keypoint_ap(people, wrong) == pytest.approx(51 / 101)
    # a person with no labelled joint is ignored (as COCOeval does): perfect stays 1.0
    ghost = people + [{"image_id": 1, "joints": np.zeros((17, 2)), "visible": np.zeros(17), "area": 100.0,
                       "box": [0, 0, 10, 10]}]
    assert keypoint_ap(ghost, perfect) == pytest.approx(1.0)


def test_manager_scores_ground_truth_as_perfect(synth, coco_loader):
    # coordinates equal to the crop ground truth go through the inverse affine: PCK and AP are 1.0
    for metric in ("PCK@0.2", "keypoint AP"):
        acc = PoseModelManager(metric).metric_accumulator()
        for batch in coco_loader:
            acc.update(batch[3]["crop_joints"], batch)
        assert acc.compute() == pytest.approx(1.0)
    mpii = make_pose_loader(load_pose_dataset("mpii", synth.mpii_json, synth.image_dir, input_size=SIZE), 3)
    acc = PoseModelManager("PCKh@0.5").metric_accumulator()
    for batch in mpii:
        acc.update(batch[3]["crop_joints"], batch)
    assert acc.compute() == 1.0


def test_manager_methods(coco_loader):
    mm = PoseModelManager("PCK@0.2")
    assert mm.metric_name == "PCK@0.2"
    model = get_model("simple_baseline_resnet", **SMALL["simple_baseline_resnet"])
    batch = next(iter(coco_loader))
    assert mm.forward_to_gen_mid_data(model, batch, "cpu").shape == (3, 17, 16, 16)
    assert mm.dummy_forward_to_gen_mid_data(model, (1, 3, *SIZE), "cpu").shape == (1, 17, 16, 16)
    flops, params = mm.get_model_flops_and_param(model, (1, 3, *SIZE))
    assert flops > 0 and params == sum(p.numel() for p in model.parameters())
    assert mm.get_model_latency(model, 2, (1, 3, *SIZE), "cpu") > 0
    assert 0.0 <= mm.get_model_acc(model, coco_loader, "cpu") <= 1.0


def _write_coco(path: Path, anns, image_name="a.jpg"):
    cats = [{"id": 1, "name": "person", "keypoints": list(COCO_LAYOUT.joints)}]
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": image_name, "width": 96, "height": 96}],
                                "annotations": anns, "categories": cats}))


def _ann(i, kp, **kw):
    return {"id": i, "image_id": 1, "category_id": 1, "iscrowd": 0, "keypoints": kp, "num_keypoints": 1,
            "bbox": [10, 10, 40, 60], "area": 1200.0, **kw}


def test_bad_input(tmp_path, synth):
    good = [30.0, 30.0, 2] + [0, 0, 0] * 16
    shutil.copy(Path(synth.image_dir) / "000000.jpg", tmp_path / "a.jpg")
    ann = tmp_path / "k.json"
    _write_coco(ann, [_ann(1, good), _ann(2, [0] * 51), _ann(3, good, iscrowd=1)])
    ds = load_pose_dataset("coco", str(ann), str(tmp_path), input_size=SIZE)
    assert len(ds) == 1 and ds.skipped == 2  # no visible keypoint, crowd: skipped
    _write_coco(ann, [_ann(1, [0] * 51)])
    with pytest.raises(PoseAnnotationError, match="no person with a visible keypoint"):
        load_pose_dataset("coco", str(ann), str(tmp_path))
    _write_coco(ann, [_ann(1, [1.0] * 48)])
    with pytest.raises(PoseAnnotationError, match="expected 51"):
        load_pose_dataset("coco", str(ann), str(tmp_path))
    _write_coco(ann, [_ann(1, good)], image_name="missing.jpg")
    with pytest.raises(DatasetNotFoundError, match="missing"):
        load_pose_dataset("coco", str(ann), str(tmp_path))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    _write_coco(ann, [_ann(1, good)], image_name="bad.jpg")
    with pytest.raises(CorruptImageError, match="cannot be decoded"):
        load_pose_dataset("coco", str(ann), str(tmp_path))[0]
    ann.write_text("{not json")
    with pytest.raises(PoseAnnotationError, match="not valid json"):
        load_pose_dataset("coco", str(ann), str(tmp_path))
    with pytest.raises(DatasetNotFoundError):
        load_pose_dataset("mpii", str(tmp_path / "none.json"), str(tmp_path))
    mpii = tmp_path / "m.json"
    entry = {"image": "a.jpg", "center": [40, 40], "scale": 0.3, "joints": [[1, 1]] * 15, "joints_vis": [1] * 15}
    mpii.write_text(json.dumps([entry]))
    with pytest.raises(PoseAnnotationError, match="wrong number of joints"):
        read_mpii_json(str(mpii), str(tmp_path))
    with pytest.raises(ValueError, match="unknown pose metric"):
        PoseModelManager("mAP")


def test_mpii_head_size(tmp_path):
    joints = [[0, 0]] * 8 + [[10, 10], [10, 40]] + [[0, 0]] * 6
    entries = [{"image": "a.jpg", "center": [40, 40], "scale": 0.3, "joints": joints, "joints_vis": [1] * 16,
                "head_box": [0, 0, 30, 40]},
               {"image": "a.jpg", "center": [40, 40], "scale": 0.3, "joints": joints, "joints_vis": [1] * 16},
               {"image": "a.jpg", "center": [40, 40], "scale": 0.3, "joints": joints, "joints_vis": [0] * 16}]
    (tmp_path / "m.json").write_text(json.dumps(entries))
    records, skipped = read_mpii_json(str(tmp_path / "m.json"), str(tmp_path))
    assert skipped == 1  # no visible joint
    assert records[0].norm == pytest.approx(0.6 * 50)  # 0.6 x the head box diagonal (30-40-50)
    assert records[1].norm == pytest.approx(30)  # upper neck to head top


def test_wrong_joint_count_and_metric_mismatch(synth, coco_loader):
    mm = PoseModelManager("PCK@0.2")
    model = get_model("deeppose_resnet", num_joints=16, **SMALL["deeppose_resnet"])
    with pytest.raises(ValueError, match="another joint set"):
        mm.get_model_acc(model, coco_loader, "cpu")
    with pytest.raises(ValueError, match="PCKh needs head sizes"):
        PoseModelManager("PCKh@0.5").get_model_acc(get_model("deeppose_resnet", **SMALL["deeppose_resnet"]),
                                                   coco_loader, "cpu")


def _pipeline(name, synth, tmp_path, **kw):
    train = make_pose_loader(load_pose_dataset("coco", synth.coco_json, synth.image_dir, input_size=SIZE, train=True),
                             3, limit=3)
    test = make_pose_loader(load_pose_dataset("coco", synth.coco_json, synth.image_dir, input_size=SIZE), 3, limit=3)
    torch.manual_seed(0)
    model = get_model(name, **SMALL[name]).eval()
    report = run_pipeline(model, PoseModelManager("PCK@0.2"), train, test, (1, 3, *SIZE), str(tmp_path),
                          sparsities=(0.0, 0.5), verbose=False, **kw)
    assert report.num_blocks >= 1 and report.coverage > 0
    assert report.num_descendants >= 1 and 0 < report.descendant_bytes[0] <= report.descendant_bytes[1]
    assert report.descendant_bytes[1] < report.block_bytes[1]
    assert report.metric_name == "PCK@0.2" and 0.0 <= report.teacher_metric <= 1.0
    assert report.live_output_ok
    c = report.chosen
    assert (not c["feasible"]) or c["model_bytes"] <= report.budget["max_memory_bytes"]
    return report


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simple_baseline_resnet", "deeppose_resnet"])
def test_pipeline_top_down(name, synth, tmp_path):
    _pipeline(name, synth, tmp_path)


@pytest.mark.slow
def test_pipeline_keypoint_rcnn_reduced(synth, tmp_path):
    # the traceable parts (backbone, RPN conv, box and keypoint heads) become blocks;
    # reduced: fewer latency runs and compositions than the bench
    report = _pipeline("keypoint_rcnn_resnet_fpn", synth, tmp_path, latency_samples=1, num_compositions=1)
    assert report.num_blocks >= 4


@pytest.mark.slow
def test_demo_quick(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "demos" / "pose_estimation_demo.py"
    spec = importlib.util.spec_from_file_location("pose_estimation_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)  # type: ignore[union-attr]
    results = demo.main(["--quick", "--quiet", "--out", str(tmp_path / "demo"), "--threads", "1"])
    assert (tmp_path / "demo" / "results.json").is_file()
    assert results["data"] == "synthetic" and results["metric"] == "PCK@0.2"
    (model,) = results["models"].values()
    assert model["num_blocks"] >= 1 and 0.0 <= model["teacher_metric"] <= 1.0 and model["live_output_ok"]


def test_block_retraining_skips_empty_captures(tmp_path):
    # core fix: a block whose input is empty in a batch (a Keypoint R-CNN head after a crop
    # with no detection) is skipped, instead of its MSE over nothing stopping training as NaN
    from legodnn import AutoBlockManager, BlockRetrainer
    from legodnn.model_manager import CommonModelManager

    torch.manual_seed(0)
    model = get_model("deeppose_resnet", **SMALL["deeppose_resnet"]).eval()
    mm = CommonModelManager()
    bm = AutoBlockManager([0.0, 0.5], model, mm, (1, 3, *SIZE), 0.125, "cpu", verbose=False)
    bm.extract_all_blocks(str(tmp_path / "c"))
    empty, full = (torch.rand(0, 3, *SIZE), None), (torch.rand(2, 3, *SIZE), None)
    history = BlockRetrainer(model, bm, mm, str(tmp_path / "c"), str(tmp_path / "t"), 1, [empty, full],
                             val_loader=[empty, full], verbose=False).train_all_blocks()
    losses = [v for h in history.values() for v in h["train"] + h["val"]]
    assert losses and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("name", ["simple_baseline_resnet", "deeppose_resnet"])
def test_top_down_models_trace_and_get_gradients(name):
    model = get_model(name, **SMALL[name])
    x = torch.rand(2, 3, *SIZE)
    model.train()(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))


@pytest.mark.parametrize("name", list(SMALL))
def test_training_loss_per_model(name, coco_loader):
    from cv_tasks.pose_estimation.train import pose_loss

    model = get_model(name, **SMALL[name]).train()
    loss = pose_loss(model, next(iter(coco_loader)), torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert sum(p.grad is not None for p in model.parameters()) > 0.9 * len(list(model.parameters()))
