"""Data sets: CIFAR in its standard on-disk format (written here, tiny), safe unpickling, digits, folders."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from cv_tasks.image_classification import datasets
from cv_tasks.image_classification.datasets import (
    CIFAR10,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DatasetNotFoundError,
    UnsafePickleError,
    cifar10_dataloaders,
    cifar100_dataloaders,
    load_pickle,
)
from cv_tasks.image_classification.datasets.transforms import (
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
)

PER_BATCH = 4  # images in each CIFAR-10 training batch file (the real ones hold 10,000)
N_TEST = 6
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as the real CIFAR files, made with Python 2, do.

    Loaded with ``encoding="latin1"`` those become ``str``; with ``encoding="bytes"``, ``bytes``.
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump(path: Path, obj: object, py2: bool) -> None:
    with path.open("wb") as f:
        if py2:
            _Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=4)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, py2: bool = True) -> Dict[str, Tuple[np.ndarray, List[int]]]:
    """A tiny CIFAR-10 in the standard layout; returns {file: (data, labels)}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = N_TEST if name == "test_batch" else PER_BATCH
        data = _images(n, seed=i)
        labels = [(i * 7 + j) % 10 for j in range(n)]
        _dump(folder / name, {b"batch_label": f"batch {name}".encode(), b"labels": labels, b"data": data,
                              b"filenames": [f"img_{j}.png".encode() for j in range(n)]}, py2)
        written[name] = (data, labels)
    _dump(folder / "batches.meta", {b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072,
                                    b"label_names": [c.encode() for c in CIFAR10_NAMES]}, py2)
    return written


def write_cifar100(root: Path, py2: bool = False) -> Dict[str, Tuple[np.ndarray, List[int]]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for i, (name, n) in enumerate((("train", 10), ("test", 5))):
        data = _images(n, seed=10 + i)
        fine = [(13 * j + i) % 100 for j in range(n)]
        _dump(folder / name, {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(), b"fine_labels": fine,
                              b"coarse_labels": [f // 5 for f in fine], b"data": data}, py2)
        written[name] = (data, fine)
    _dump(folder / "meta", {b"fine_label_names": [f"class_{k}".encode() for k in range(100)],
                            b"coarse_label_names": [f"super_{k}".encode() for k in range(20)]}, py2)
    return written


# -- CIFAR ----------------------------------------------------------------------
@pytest.mark.parametrize("py2", [True, False], ids=["python2-format", "python3-bytes-keys"])
def test_cifar10_reads_the_standard_files(tmp_path: Path, py2: bool) -> None:
    written = write_cifar10(tmp_path, py2=py2)
    train = CIFAR10(tmp_path, train=True)
    test = CIFAR10(tmp_path, train=False)
    assert len(train) == 5 * PER_BATCH and len(test) == N_TEST
    assert train.classes == CIFAR10_NAMES
    assert train.targets == [label for k in range(1, 6) for label in written[f"data_batch_{k}"][1]]
    assert test.targets == written["test_batch"][1]
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
    raw = written["data_batch_2"][0][1]
    image, label = train[PER_BATCH + 1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == written["data_batch_2"][1][1]
    for c, h, w in ((0, 0, 0), (1, 5, 7), (2, 31, 30)):
        assert image[c, h, w].item() == pytest.approx(raw[c * 1024 + h * 32 + w] / 255)


def test_cifar100_reads_fine_labels_and_names(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path)
    train, test = CIFAR100(tmp_path, train=True), CIFAR100(tmp_path, train=False)
    assert len(train) == 10 and len(test) == 5
    assert train.targets == written["train"][1] and test.targets == written["test"][1]
    assert train.classes[:2] == ["class_0", "class_1"] and len(train.classes) == 100
    image, _ = test[4]
    assert torch.allclose(image, torch.from_numpy(written["test"][0][4]).float().view(3, 32, 32) / 255)


def test_root_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    assert len(CIFAR10(tmp_path / "cifar-10-batches-py", train=False)) == N_TEST


def test_cifar_dataloaders_augment_and_normalise(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    train, test = cifar10_dataloaders(tmp_path, batch_size=3, train_subset=7, test_subset=None, seed=1)
    assert len(train.dataset) == 7 and len(test.dataset) == N_TEST
    x, y = next(iter(train))
    assert x.shape == (3, 3, 32, 32) and y.dtype == torch.long
    # the test images are only normalised, with the usual CIFAR-10 mean and std
    x, y = next(iter(test))
    raw = torch.from_numpy(written["test_batch"][0][:3]).float().view(3, 3, 32, 32) / 255
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    assert y.tolist() == written["test_batch"][1][:3]
    # the same seed picks the same subset and order
    one, _ = cifar10_dataloaders(tmp_path, batch_size=3, train_subset=7, seed=1)
    two, _ = cifar10_dataloaders(tmp_path, batch_size=3, train_subset=7, seed=1)
    assert [b[1].tolist() for b in one] == [b[1].tolist() for b in two]

    write_cifar100(tmp_path)
    train, test = cifar100_dataloaders(tmp_path, batch_size=5, test_subset=2)
    x, _ = next(iter(test))
    assert x.shape == (2, 3, 32, 32)
    assert datasets.cifar_transforms(CIFAR100_MEAN, CIFAR100_STD, train=False).mean.flatten().tolist() == \
        pytest.approx(list(CIFAR100_MEAN))


def test_missing_files_say_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR10(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message and "download=True" in message
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        cifar100_dataloaders(tmp_path, batch_size=4)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks data_batch_3"):
        CIFAR10(tmp_path)
    assert isinstance(info.value, FileNotFoundError)


def test_download_uses_torchvisions_downloader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    utils = pytest.importorskip("torchvision.datasets.utils")
    calls = []

    def fake_download(url: str, root: str, filename: str, md5: str) -> None:
        calls.append((url, filename, md5))
        write_cifar10(Path(root))

    monkeypatch.setattr(utils, "download_and_extract_archive", fake_download)
    assert len(CIFAR10(tmp_path / "data", train=False, download=True)) == N_TEST
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a")]
    CIFAR10(tmp_path / "data", download=True)  # present now: no second download
    assert len(calls) == 1


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "class instance"])
def test_a_pickle_with_code_is_refused(tmp_path: Path, payload: str) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = {"os.system": _Evil(marker), "builtins.eval": _EvalEvil(), "class instance": Path("/etc")}[payload]
    target = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with target.open("wb") as f:
        pickle.dump({b"data": _images(PER_BATCH, 0), b"labels": [0] * PER_BATCH, b"x": evil}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match="refusing to load") as info:
        CIFAR10(tmp_path)
    assert str(target) in str(info.value)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_restricted_unpickler_allows_plain_data_and_arrays(tmp_path: Path) -> None:
    obj = {"a": [1, 2.5, "x", b"y", None, True], "arr": np.arange(6, dtype=np.int16).reshape(2, 3)}
    for protocol in (3, 4):  # protocol 2 from Python 3 names _codecs.encode for bytes: refused
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        loaded = load_pickle(path)
        np.testing.assert_array_equal(loaded["arr"], obj["arr"])
        assert loaded["a"] == obj["a"]
    # a truncated file is a clear error, not an EOFError from deep inside pickle
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "p4.pkl").read_bytes()[:40])
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        load_pickle(tmp_path / "cut.pkl")


def test_a_batch_of_the_wrong_kind_is_a_clear_error(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes((tmp_path / "cifar-100-python" / "test").read_bytes())
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        CIFAR10(tmp_path)
    buf = io.BytesIO()
    pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, buf, protocol=4)
    for name in [f"data_batch_{k}" for k in range(1, 6)]:
        (folder / name).write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"uint8 \(N, 3072\)"):
        CIFAR10(tmp_path)


def test_tensor_transforms() -> None:
    x = torch.arange(2 * 4 * 5, dtype=torch.float32).view(2, 4, 5)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)
    torch.manual_seed(0)
    crops = [RandomCrop(4, padding=2)(x) for _ in range(20)]
    assert all(c.shape == (2, 4, 4) for c in crops)
    assert len({c.sum().item() for c in crops}) > 1  # the window moves
    assert torch.equal(RandomCrop(4)(x[:, :, :4]), x[:, :, :4])
    torch.testing.assert_close(Normalize([1.0, 2.0], [2.0, 4.0])(torch.ones(2, 1, 1)),
                               torch.tensor([0.0, -0.25]).view(2, 1, 1))
    with pytest.raises(ValueError):
        Normalize([0.5], [0.0])


# -- digits -----------------------------------------------------------------------
def test_digits_are_real_images_split_by_class() -> None:
    train, test = datasets.digits_dataloaders(batch_size=64)
    assert len(train.dataset) + len(test.dataset) == 1797
    assert len(test.dataset) == pytest.approx(0.2 * 1797, abs=5)
    counts = np.bincount(test.dataset.targets, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # 20% of each class
    x, y = next(iter(test))
    assert x.shape == (64, 3, 32, 32) and y.dtype == torch.long
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey, repeated over channels
    everything = torch.cat([b[0] for b in test])
    assert abs(everything.mean().item()) < 0.1 and abs(everything.std().item() - 1) < 0.1
    # the split is fixed by the seed and disjoint
    a, b = datasets.Digits(train=True), datasets.Digits(train=False)
    images, _ = datasets.load_digits_images()
    assert len(a) + len(b) == len(images)
    assert not set(map(tuple, a.data[:, 0].flatten(1)[:, ::37].tolist())) & set(
        map(tuple, b.data[:, 0].flatten(1)[:, ::37].tolist()))
    assert torch.equal(datasets.Digits(train=False).data, b.data)
    assert not torch.equal(datasets.Digits(train=False, seed=1).data, b.data)


@pytest.mark.slow
def test_importing_datasets_is_light() -> None:
    code = ("import sys, cv_tasks.image_classification.datasets; "
            "sys.exit(int('torchvision' in sys.modules) + 2 * int('sklearn' in sys.modules))")
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


# -- your own folders ---------------------------------------------------------------
def _write_pngs(root: Path, classes: Tuple[str, ...], per_class: int, size: Tuple[int, int]) -> None:
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_imagefolder_dataloaders(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    _write_pngs(tmp_path / "train", ("cat", "dog", "emu"), 3, (40, 30))
    _write_pngs(tmp_path / "test", ("cat", "dog", "emu"), 2, (20, 24))
    train, test = datasets.imagefolder_dataloaders(tmp_path / "train", tmp_path / "test", image_size=16,
                                                   batch_size=4)
    assert train.dataset.classes == ["cat", "dog", "emu"] and len(train.dataset) == 9 and len(test.dataset) == 6
    x, y = next(iter(train))
    assert x.shape == (4, 3, 16, 16) and set(y.tolist()) <= {0, 1, 2}
    x, y = next(iter(test))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    train, _ = datasets.imagefolder_dataloaders(tmp_path / "train", tmp_path / "test", 16, train_subset=5)
    assert len(train.dataset) == 5


def test_imagefolder_errors(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    _write_pngs(tmp_path / "train", ("cat", "dog"), 1, (8, 8))
    with pytest.raises(DatasetNotFoundError, match="test_dir .* is not a directory"):
        datasets.imagefolder_dataloaders(tmp_path / "train", tmp_path / "nope", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="class sub-folders"):
        datasets.imagefolder_dataloaders(tmp_path / "train", tmp_path / "empty", 8)
    _write_pngs(tmp_path / "test", ("cat", "cow"), 1, (8, 8))
    with pytest.raises(ValueError, match="same class"):
        datasets.imagefolder_dataloaders(tmp_path / "train", tmp_path / "test", 8)
