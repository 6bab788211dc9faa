"""Action recognition: models, UCF101/HMDB51 loading, clip sampling, top-k metrics, the model
manager, the whole pipeline on every model, and the demo.

Videos are written here, in ``tmp_path``, as real MJPEG .avi files in the standard layouts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import cv_tasks
from cv_tasks.action_recognition import datasets as D
from cv_tasks.action_recognition.metrics import VideoAccuracy, topk_accuracy, video_level_scores
from cv_tasks.action_recognition.model_manager import ActionRecognitionModelManager
from cv_tasks.action_recognition.models import load_weights_file
from cv_tasks.action_recognition.train import train_clip_classifier
from cv_tasks.pipeline import run_pipeline

MODELS = ["c3d_tiny", "tsn_resnet18", "r3d_18", "r2plus1d_18"]
SMALL = {"c3d_tiny": {}, "tsn_resnet18": {"base_width": 8}, "r3d_18": {"base_width": 8},
         "r2plus1d_18": {"base_width": 8}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ucf(tmp_path_factory: pytest.TempPathFactory) -> D.SyntheticVideos:
    """4 classes x (3 train + 1 test) videos of 12 frames, 40x32, UCF101 layout."""
    return D.write_synthetic_videos(tmp_path_factory.mktemp("ucf"), num_classes=4, train_per_class=3,
                                    test_per_class=1, frames=12, size=(40, 32))


def _write_ucf_lists(root: Path, class_ind: str, train: str, test: str) -> None:
    splits = root / "ucfTrainTestlist"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "classInd.txt").write_text(class_ind)
    (splits / "trainlist01.txt").write_text(train)
    (splits / "testlist01.txt").write_text(test)


# -- models ---------------------------------------------------------------------------
def test_standard_width_has_torchvision_state_dicts() -> None:
    """At base_width 64 the parameter names and shapes are torchvision's (built on the meta device: no memory)."""
    import torchvision

    for name, build in [("tsn_resnet18", torchvision.models.resnet18), ("r3d_18", torchvision.models.video.r3d_18),
                        ("r2plus1d_18", torchvision.models.video.r2plus1d_18)]:
        with torch.device("meta"):
            ours, ref = cv_tasks.get_model(name, num_classes=5), build(weights=None, num_classes=5)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_outputs_match_torchvision() -> None:
    """Same weights, same outputs: TSN = mean of ResNet-18 frame logits; R(2+1)D as torchvision's (one block
    per stage keeps it cheap; the block itself, with its mid-plane count, is the one of the 18-layer net)."""
    from torchvision.models import resnet18
    from torchvision.models.video.resnet import (
        BasicBlock,
        Conv2Plus1D,
        R2Plus1dStem,
        VideoResNet as TVVideoResNet,
    )

    from cv_tasks.action_recognition.models import VideoResNet

    x = torch.rand(2, 3, 2, 32, 32)
    ref = resnet18(weights=None, num_classes=5).eval()
    tsn = cv_tasks.get_model("tsn_resnet18", num_classes=5).eval()
    tsn.load_state_dict(ref.state_dict())
    ref3 = TVVideoResNet(BasicBlock, [Conv2Plus1D] * 4, [1, 1, 1, 1], R2Plus1dStem, num_classes=5).eval()
    ours3 = VideoResNet("r2plus1d", (1, 1, 1, 1), num_classes=5).eval()
    ours3.load_state_dict(ref3.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(tsn(x), (ref(x[:, :, 0]) + ref(x[:, :, 1])) / 2)
        torch.testing.assert_close(ours3(x), ref3(x))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_path_loads_a_checkpoint(tmp_path: Path, suffix: str) -> None:
    model = cv_tasks.get_model("r3d_18", num_classes=3, base_width=4).eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": model.state_dict()}, path)  # nested, as training scripts save it
    else:
        from safetensors.torch import save_file
        save_file(model.state_dict(), str(path))
    loaded = cv_tasks.get_model("r3d_18", num_classes=3, base_width=4, weights_path=str(path)).eval()
    x = torch.rand(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_weights_path_errors(tmp_path: Path) -> None:
    torch.save(cv_tasks.get_model("c3d_tiny", num_classes=3).state_dict(), tmp_path / "c3d.pt")
    mismatch = r"does not fit this C3DTiny \(2 shape mismatches: fc.weight: .*fc.bias: file \(3,\), model \(5,\)\)"
    with pytest.raises(ValueError, match=mismatch):
        cv_tasks.get_model("c3d_tiny", num_classes=5, weights_path=str(tmp_path / "c3d.pt"))
    with pytest.raises(ValueError, match="does not fit this VideoResNet.*missing"):
        cv_tasks.get_model("r3d_18", num_classes=3, base_width=4, weights_path=str(tmp_path / "c3d.pt"))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="weights_only=True"):
        load_weights_file(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        cv_tasks.get_model("c3d_tiny", weights_path=str(tmp_path / "none.pt"))


def test_bad_model_options() -> None:
    with pytest.raises(ValueError, match="base_width"):
        cv_tasks.get_model("r3d_18", base_width=0)
    with pytest.raises(ValueError, match="kind"):
        from cv_tasks.action_recognition.models import VideoResNet
        VideoResNet("r4d")


# -- sampling -------------------------------------------------------------------------
def test_segment_indices() -> None:
    # 16 frames, 4 segments of 4 frames: centres 2, 6, 10, 14; two test clips at 1/4 and 3/4
    assert D.segment_indices(16, 4, train=False) == [2, 6, 10, 14]
    assert D.segment_indices(16, 4, train=False, clip=0, num_clips=2) == [1, 5, 9, 13]
    assert D.segment_indices(16, 4, train=False, clip=1, num_clips=2) == [3, 7, 11, 15]
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = D.segment_indices(16, 4, train=True, rng=rng)
        assert all(4 * i <= j < 4 * i + 4 for i, j in enumerate(idx))
    assert D.segment_indices(2, 4, train=False) == [0, 0, 1, 1]  # short video: repeated frames


def test_uniform_indices() -> None:
    assert D.uniform_indices(16, 8, train=False) == list(range(4, 12))  # centred
    starts = [D.uniform_indices(16, 8, train=False, clip=c, num_clips=3)[0] for c in range(3)]
    assert starts == [0, 4, 8]  # spread over the 9 possible starts
    assert D.uniform_indices(16, 4, train=False, stride=2) == [4, 6, 8, 10]
    assert D.uniform_indices(5, 8, train=False) == [0, 1, 2, 3, 4, 0, 1, 2]  # short video loops
    rng = np.random.default_rng(0)
    assert {D.uniform_indices(10, 8, train=True, rng=rng)[0] for _ in range(50)} == {0, 1, 2}
    with pytest.raises(ValueError, match="clip must be"):
        D.uniform_indices(16, 8, train=False, clip=2, num_clips=2)


# -- data -----------------------------------------------------------------------------
def test_decoded_frames_show_the_motion(ucf: D.SyntheticVideos) -> None:
    video = next((ucf.root / "UCF-101" / "MoveRight").glob("*.avi"))
    assert D.count_frames(video) == 12
    frames = D.read_frames(video, [11, 0, 0])  # any order, repeats allowed
    assert frames.shape == (3, 32, 40, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[1], frames[2])

    def centre_x(frame: np.ndarray) -> float:
        weight = (frame.astype(float).sum(-1) > 300).astype(float)  # the bright shape
        return float((weight * np.arange(frame.shape[1])).sum() / weight.sum())

    assert centre_x(frames[0]) > centre_x(frames[1]) + 5  # frame 11 is right of frame 0


def test_indices_past_the_end_get_the_real_last_frame(ucf: D.SyntheticVideos) -> None:
    # a container may report more frames than it holds: past its end, the last real frame
    video = next((ucf.root / "UCF-101" / "MoveRight").glob("*.avi"))
    last = D.read_frames(video, [11])[0]
    np.testing.assert_array_equal(D.read_frames(video, [0, 20])[1], last)
    np.testing.assert_array_equal(D.read_frames(video, [30])[0], last)


def test_ucf101_datasets(ucf: D.SyntheticVideos) -> None:
    sampler = D.ClipSampler(4, "uniform", num_clips=3)
    train, test, classes = D.ucf101_datasets(ucf.root, sampler=sampler, size=32, flip=False)
    assert classes == ["MoveRight", "MoveLeft", "MoveDown", "MoveUp"]
    assert len(train) == 12 and len(test) == 4 * 3  # three clips per test video
    for s in train.samples:
        assert classes[s.label] == s.path.parent.name
    clip, label, video = test[5]
    assert clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32
    assert (label, video) == (test.samples[1].label, 1)
    _, test_loader = D.video_dataloaders(train, test, batch_size=4)
    clips, _, videos = next(iter(test_loader))
    assert clips.shape == (4, 3, 4, 32, 32) and videos.tolist() == [0, 0, 0, 1]
    assert torch.equal(test[0][0], test[0][0])  # test clips are deterministic


def test_hmdb51_datasets(tmp_path: Path) -> None:
    D.write_synthetic_videos(tmp_path, num_classes=3, train_per_class=2, test_per_class=1, frames=8,
                             size=(32, 32), layout="hmdb51")
    # a video tagged 0 (unused in this split) is in neither list
    split = tmp_path / "testTrainMulti_7030_splits" / "MoveLeft_test_split1.txt"
    split.write_text(split.read_text().replace("g01_c01.avi 1", "g01_c01.avi 0"))
    train, test, classes = D.hmdb51_datasets(tmp_path, sampler=D.ClipSampler(4), size=32)
    assert classes == ["MoveDown", "MoveLeft", "MoveRight"]  # sorted, as the split files
    assert len(train.samples) == 5 and len(test.samples) == 3
    assert train[0][0].shape == (3, 4, 32, 32)


def test_transform_shapes_and_normalisation() -> None:
    frames = np.full((4, 30, 50, 3), 255, np.uint8)
    clip = D.ClipTransform(size=24, train=True)(frames)
    assert clip.shape == (3, 4, 24, 24)
    expected = (1 - torch.tensor(D.KINETICS_MEAN)) / torch.tensor(D.KINETICS_STD)
    torch.testing.assert_close(clip[:, 0, 0, 0], expected)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        D.ClipTransform()(np.zeros((4, 30, 50), np.uint8))


# -- bad input ------------------------------------------------------------------------
def test_unreadable_and_empty_videos(tmp_path: Path) -> None:
    folder = tmp_path / "UCF-101" / "Jump"
    folder.mkdir(parents=True)
    (folder / "v_Jump_g01_c01.avi").write_bytes(b"")  # zero length
    (folder / "v_Jump_g02_c01.avi").write_bytes(b"RIFF" + bytes(range(256)) * 8)  # garbage
    _write_ucf_lists(tmp_path, "1 Jump\n", "Jump/v_Jump_g01_c01.avi 1\n", "Jump/v_Jump_g02_c01.avi\n")
    train, test, _ = D.ucf101_datasets(tmp_path, size=32)
    with pytest.raises(D.VideoDecodeError, match="v_Jump_g01_c01.avi"):
        train[0]
    with pytest.raises(D.VideoDecodeError, match="v_Jump_g02_c01.avi"):
        test.check()


def test_class_missing_from_class_index(ucf: D.SyntheticVideos, tmp_path: Path) -> None:
    video = "MoveRight/" + next((ucf.root / "UCF-101" / "MoveRight").glob("*.avi")).name
    _write_ucf_lists(tmp_path, "1 MoveRight\n", f"{video} 1\nMoveLeft/b.avi 2\n", f"{video}\n")
    with pytest.raises(D.SplitFileError, match=r"trainlist01.txt:2: class folder 'MoveLeft' is not in classInd"):
        D.read_ucf101_split(ucf.root / "UCF-101", tmp_path / "ucfTrainTestlist")


def test_split_names_a_missing_video(ucf: D.SyntheticVideos, tmp_path: Path) -> None:
    _write_ucf_lists(tmp_path, "1 MoveRight\n", "MoveRight/v_gone.avi 1\n", "MoveRight/v_gone.avi\n")
    with pytest.raises(D.DatasetNotFoundError, match="trainlist01.txt:1 names the video MoveRight/v_gone.avi"):
        D.read_ucf101_split(ucf.root / "UCF-101", tmp_path / "ucfTrainTestlist")


def test_malformed_split_files(ucf: D.SyntheticVideos, tmp_path: Path) -> None:
    video = "MoveRight/" + next((ucf.root / "UCF-101" / "MoveRight").glob("*.avi")).name
    _write_ucf_lists(tmp_path, "1 MoveRight\n", f"{video} 2\n", f"{video}\n")
    with pytest.raises(D.SplitFileError, match="label 2 disagrees with classInd"):
        D.read_ucf101_split(ucf.root / "UCF-101", tmp_path / "ucfTrainTestlist")
    _write_ucf_lists(tmp_path, "1 MoveRight\n3 MoveLeft\n", "", "")
    with pytest.raises(D.SplitFileError, match="must run 1..2"):
        D.read_ucf101_class_index(tmp_path / "ucfTrainTestlist")
    with pytest.raises(D.DatasetNotFoundError, match="does not exist"):
        D.ucf101_datasets(tmp_path / "nowhere")
    with pytest.raises(D.DatasetNotFoundError, match="classInd.txt not found"):
        D.read_ucf101_split(ucf.root, tmp_path / "empty")
    hmdb = tmp_path / "hmdb"
    hmdb.mkdir()
    (hmdb / "jump_test_split1.txt").write_text("a.avi 7\n")
    with pytest.raises(D.SplitFileError, match=r"jump_test_split1.txt:1: expected '<video> <0\|1\|2>'"):
        D.read_hmdb51_split(hmdb, hmdb)
    with pytest.raises(ValueError, match="split must be 1, 2 or 3"):
        D.read_hmdb51_split(hmdb, hmdb, split=4)


# -- metric ---------------------------------------------------------------------------
def test_perfect_predictions_score_one() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 9])
    scores = torch.nn.functional.one_hot(labels, 10).float() * 5
    acc = VideoAccuracy()
    acc.update(scores[:4], (None, labels[:4], torch.tensor([0, 0, 1, 2])))
    acc.update(scores[4:], (None, labels[4:], torch.tensor([3, 4])))
    assert acc.results() == {"top-1 (clip)": 1.0, "top-5 (clip)": 1.0, "top-1 (video)": 1.0, "top-5 (video)": 1.0}


def test_top5_hand_computed() -> None:
    # scores rank the classes 0 > 1 > ... > 5 in every row. Label 0: top-1 and top-5 hit;
    # label 4 (5th): top-5 hit only; label 5 (6th): both miss -> top-1 1/3, top-5 2/3
    scores = torch.tensor([[6.0, 5, 4, 3, 2, 1]]).repeat(3, 1)
    labels = torch.tensor([0, 4, 5])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 5) == pytest.approx(2 / 3)
    assert topk_accuracy(scores[:, :3], torch.tensor([0, 1, 2]), 5) == 1.0  # k > classes: all in the top k


def test_video_level_hand_computed() -> None:
    # video 0 (label 1): clip logits [2, 0] -> softmax [0.881, 0.119] (wrong), [0, 1] -> [0.269, 0.731]
    # (right); mean [0.575, 0.425] -> class 0, wrong. video 1 (label 1): one clip [0, 3], right.
    # clip top-1 = 2/3, video top-1 = 1/2; with 2 classes top-5 is 1 at both levels.
    scores = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    labels, videos = torch.tensor([1, 1, 1]), torch.tensor([7, 7, 3])
    mean, video_labels = video_level_scores(scores, labels, videos)
    assert video_labels.tolist() == [1, 1]  # videos sorted by id: 3, then 7
    torch.testing.assert_close(mean[1], torch.tensor([(0.8808 + 0.2689) / 2, (0.1192 + 0.7311) / 2]),
                               atol=1e-4, rtol=0)
    acc = VideoAccuracy()
    acc.update(scores, (None, labels, videos))
    assert acc.results() == pytest.approx({"top-1 (clip)": 2 / 3, "top-5 (clip)": 1.0,
                                           "top-1 (video)": 0.5, "top-5 (video)": 1.0})
    two = VideoAccuracy("top-1 (clip)")  # (data, target) batches: each clip its own video
    two.update(scores, (None, labels))
    assert two.compute() == pytest.approx(2 / 3) and two.results()["top-1 (video)"] == pytest.approx(2 / 3)


def test_metric_bad_input() -> None:
    with pytest.raises(ValueError, match="different labels"):
        video_level_scores(torch.rand(2, 3), torch.tensor([0, 1]), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        topk_accuracy(torch.rand(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="no batches"):
        VideoAccuracy().compute()
    with pytest.raises(ValueError, match="metric must be one of"):
        ActionRecognitionModelManager("top-3")


# -- model manager --------------------------------------------------------------------
def test_model_manager(ucf: D.SyntheticVideos) -> None:
    manager = cv_tasks.get_model_manager("action_recognition")
    assert isinstance(manager, ActionRecognitionModelManager) and manager.metric_name == "top-1 (video)"
    train, test, classes = D.ucf101_datasets(ucf.root, sampler=D.ClipSampler(4, "uniform", num_clips=2), size=32,
                                             flip=False)
    train_loader, test_loader = D.video_dataloaders(train, test, batch_size=4)
    torch.manual_seed(0)
    model = cv_tasks.get_model("c3d_tiny", num_classes=len(classes))
    losses = train_clip_classifier(model, train_loader, 2, lr=3e-3, verbose=False)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    results = manager.evaluate(model, test_loader, "cpu")
    assert set(results) == {"top-1 (clip)", "top-5 (clip)", "top-1 (video)", "top-5 (video)"}
    assert manager.get_model_acc(model, test_loader, "cpu") == results["top-1 (video)"]
    assert all(0.0 <= v <= 1.0 for v in results.values()) and results["top-5 (video)"] == 1.0  # 4 classes
    assert manager.forward_to_gen_mid_data(model, next(iter(test_loader)), "cpu").shape == (4, 4)
    assert manager.dummy_forward_to_gen_mid_data(model, (2, 3, 4, 32, 32), "cpu").shape == (2, 4)
    flops, params = manager.get_model_flops_and_param(model, (1, 3, 4, 32, 32))
    # the stem alone: 16 x 3 x 27 multiply-adds at each of the 4 x 32 x 32 outputs, 2 FLOPs each
    assert flops > 2 * 16 * 3 * 27 * 4 * 32 * 32 and params == sum(p.numel() for p in model.parameters())
    assert manager.get_model_latency(model, 2, (1, 3, 4, 32, 32), "cpu", warmup_num=1) > 0


# -- the whole pipeline ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_pipeline(name: str, ucf: D.SyntheticVideos, tmp_path: Path) -> None:
    mode = "segments" if name.startswith("tsn") else "uniform"
    train, test, classes = D.ucf101_datasets(ucf.root, sampler=D.ClipSampler(4, mode, num_clips=2), size=32,
                                             flip=False)
    train_loader, test_loader = D.video_dataloaders(train, test, batch_size=4)
    torch.manual_seed(0)
    teacher = cv_tasks.get_model(name, num_classes=len(classes), **SMALL[name]).eval()
    report = run_pipeline(teacher, ActionRecognitionModelManager(), train_loader, test_loader, (1, 3, 4, 32, 32),
                          str(tmp_path), latency_samples=2, num_compositions=2, verbose=False)
    assert report.num_blocks >= 1 and 0.5 < report.coverage <= 1.0
    assert report.num_descendants == 3 * report.num_blocks  # sparsities 0.3, 0.6, 0.8
    assert 0 < report.descendant_bytes[0] < report.block_bytes[0]
    assert report.descendant_bytes[1] < report.block_bytes[1]
    assert report.metric_name == "top-1 (video)" and 0.0 <= report.teacher_metric <= 1.0
    assert report.live_output_ok
    chosen = report.chosen
    assert len(chosen["sparsities"]) == report.num_blocks
    if chosen["feasible"]:
        assert chosen["estimated_latency_s"] <= report.budget["max_latency_s"] * (1 + 1e-9)
        assert chosen["model_bytes"] <= report.budget["max_memory_bytes"]
    else:  # the closest configuration is the cheapest one
        assert chosen["sparsities"] == [0.8] * report.num_blocks or chosen["model_bytes"] < report.teacher_bytes
    assert json.loads(json.dumps(report.to_json()))["num_blocks"] == report.num_blocks


# -- the demo -------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_quick(tmp_path: Path) -> None:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "demos" / "action_recognition_demo.py"
    spec = importlib.util.spec_from_file_location("action_recognition_demo", path)
    demo = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(demo)  # type: ignore[union-attr]
    results = demo.main(["--quick", "--quiet", "--out", str(tmp_path / "run"), "--threads", "1"])
    assert "synthetic" in results["data"]
    (model,) = results["models"]
    assert model["model"] == "c3d_tiny" and model["pipeline"]["num_blocks"] >= 1
    assert 0.0 <= model["teacher_accuracy"]["top-1 (video)"] <= 1.0
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == json.loads(json.dumps(results))
    with pytest.raises(ValueError, match="not a registered model of task .action_recognition."):
        demo.main(["--quick", "--quiet", "--out", str(tmp_path / "bad"), "--models", "cifar_resnet18"])
