"""Action recognition on real video files: decoding, the metric on real labels, the pipeline per model.

    python bench/bench_action_recognition.py [--data ../shared/data/video] [--size 112] [--frames 8]
        [--width 16] [--models c3d_tiny,tsn_resnet18,r3d_18,r2plus1d_18] [--threads 2] [--out bench.json]

``--data`` holds a few real clips (by default the three of ``../shared/data/video``: UCF101
ApplyEyeMakeup, Xvid .avi; Kinetics-400 arm wrestling, H.264 .mp4; NTU RGB+D drink water,
.avi). They become a UCF101-layout folder (``UCF-101/<Class>/v_<Class>_g01_c01.<ext>``
symlinks + ``ucfTrainTestlist/``, one class per clip, every clip in both lists) in a
temporary folder, and everything goes through the task's real loaders:

1. decode speed: frames/s of a full sequential decode with OpenCV, and clips/s through the
   data set (sampling + decode + resize/crop/normalise);
2. the metric on the real labels: ground-truth one-hot scores give 1.0 at all four
   levels, a wrong-class prediction 0.0 top-1;
3. ``run_pipeline`` on each model (random weights: three videos cannot train a teacher;
   the numbers that matter are blocks, coverage, sizes and wall time per stage).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import cv_tasks
from cv_tasks.action_recognition import datasets as D
from cv_tasks.action_recognition.metrics import VideoAccuracy
from cv_tasks.action_recognition.model_manager import ActionRecognitionModelManager
from cv_tasks.pipeline import describe, run_pipeline

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "video"
CLASSES = {"applyeyemakeup": "ApplyEyeMakeup", "arm_wrestling": "ArmWrestling", "drink_water": "DrinkWater"}


def build_ucf_layout(videos: List[Path], root: Path) -> List[str]:
    """Symlink each clip as its own class into a UCF101-layout folder; returns the class names."""
    classes = []
    for video in videos:
        key = next((k for k in CLASSES if k in video.stem.lower()), None)
        name = CLASSES[key] if key else "".join(p.capitalize() for p in video.stem.split("_"))
        folder = root / "UCF-101" / name
        folder.mkdir(parents=True)
        (folder / f"v_{name}_g01_c01{video.suffix}").symlink_to(video.resolve())
        classes.append(name)
    splits = root / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    files = [f"{c}/v_{c}_g01_c01{v.suffix}" for c, v in zip(classes, videos)]
    (splits / "trainlist01.txt").write_text("".join(f"{f} {i + 1}\n" for i, f in enumerate(files)))
    (splits / "testlist01.txt").write_text("".join(f"{f}\n" for f in files))
    return classes


def decode_speed(test: D.VideoClipDataset) -> List[Dict[str, Any]]:
    """Per video: frames, resolution, full-decode frames/s and clips/s through the data set."""
    rows = []
    for video, sample in enumerate(test.samples):
        n = D.count_frames(sample.path)
        start = time.perf_counter()
        frames = D.read_frames(sample.path, list(range(n)))
        full = time.perf_counter() - start
        start = time.perf_counter()
        for clip in range(test.clips_per_video):
            test[video * test.clips_per_video + clip]
        per_clip = (time.perf_counter() - start) / test.clips_per_video
        rows.append({"video": sample.path.name, "frames": n, "height": int(frames.shape[1]),
                     "width": int(frames.shape[2]), "decode_fps": round(n / full, 1),
                     "clips_per_s": round(1 / per_clip, 2)})
    return rows


def check_metric(loader: Any, num_classes: int) -> Dict[str, Dict[str, float]]:
    """Ground truth as predictions -> 1.0 everywhere; every prediction one class off -> 0.0 top-1."""
    perfect, wrong = VideoAccuracy(), VideoAccuracy()
    for batch in loader:
        labels = batch[1]
        perfect.update(torch.nn.functional.one_hot(labels, num_classes).float(), batch)
        wrong.update(torch.nn.functional.one_hot((labels + 1) % num_classes, num_classes).float(), batch)
    results = {"ground_truth": perfect.results(), "shifted_by_one_class": wrong.results()}
    assert all(v == 1.0 for v in results["ground_truth"].values()), results
    assert results["shifted_by_one_class"]["top-1 (video)"] == 0.0, results
    return results


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of video files")
    p.add_argument("--models", default="c3d_tiny,tsn_resnet18,r3d_18,r2plus1d_18")
    p.add_argument("--size", type=int, default=112, help="crop size")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (TSN: segments)")
    p.add_argument("--width", type=int, default=16, help="base_width of the ResNets (64: standard)")
    p.add_argument("--clips", type=int, default=2, help="test clips per video")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs") / "bench_action_recognition.json")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    videos = sorted(v for v in args.data.iterdir() if v.suffix.lower() in (".avi", ".mp4", ".mkv", ".webm"))
    if not videos:
        raise SystemExit(f"no video files in {args.data}")
    out: Dict[str, Any] = {"data": str(args.data), "threads": torch.get_num_threads(), "size": args.size,
                           "frames": args.frames, "width": args.width, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ucf"
        classes = build_ucf_layout(videos, root)
        print(f"UCF101 layout in {root}: classes {classes}")
        for mode in ("uniform", "segments"):
            _, test, _ = D.ucf101_datasets(root, sampler=D.ClipSampler(args.frames, mode, stride=2,
                                                                       num_clips=args.clips), size=args.size)
            out[f"decode_{mode}"] = decode_speed(test)
            for row in out[f"decode_{mode}"]:
                print(f"  {mode:8s} {row['video']}: {row['frames']} frames {row['width']}x{row['height']}, "
                      f"full decode {row['decode_fps']} frames/s, {row['clips_per_s']} clips/s via the data set")
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            mode = "segments" if name.startswith("tsn") else "uniform"
            sampler = D.ClipSampler(args.frames, mode, stride=2, num_clips=args.clips)
            train, test, _ = D.ucf101_datasets(root, sampler=sampler, size=args.size)
            train_loader, test_loader = D.video_dataloaders(train, test, batch_size=2)
            if "metric_check" not in out:
                out["metric_check"] = check_metric(test_loader, len(classes))
                print(f"metric on the real labels: {out['metric_check']}")
            torch.manual_seed(0)
            kwargs: Dict[str, Any] = {"num_classes": len(classes)}
            if name != "c3d_tiny":
                kwargs["base_width"] = args.width
            teacher = cv_tasks.get_model(name, **kwargs).eval()
            start = time.perf_counter()
            report = run_pipeline(teacher, ActionRecognitionModelManager(), train_loader, test_loader,
                                  (1, 3, args.frames, args.size, args.size), str(Path(tmp) / name), verbose=False)
            print(describe(report, name))
            out["models"][name] = {"kwargs": kwargs, "total_s": round(time.perf_counter() - start, 2),
                                   **report.to_json()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
