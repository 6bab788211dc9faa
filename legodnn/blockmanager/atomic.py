"""Every write legodnn makes: a temporary name, fsync, one rename.

A reader, or a process killed at any instant, sees either the old file (or folder) or
the complete new one, never a half-written one. Temporary names carry the writer's
process id, ``.NAME.<pid>-<hex>.tmp`` for files and ``.NAME.<pid>-<hex>.writing`` for
folders, so that the next writer can tell the leftovers of a dead process (removed)
from the work of a live one (left alone). Files get the permissions the umask allows,
like any file the user creates, so a device's service account can read a store.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

__all__ = [
    "copy_file_atomic",
    "exchange_paths",
    "fsync_dir",
    "is_temp_name",
    "remove_stale_temps",
    "save_torch_atomic",
    "temp_path",
    "write_bytes_atomic",
    "write_tensors_atomic",
    "write_text_atomic",
]

PathLike = Union[str, os.PathLike]
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.(?P<kind>tmp|writing|old)$")


def temp_path(path: PathLike, kind: str = "tmp") -> Path:
    """A fresh temporary sibling of ``path`` owned by this process (``kind``: tmp, writing, old)."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{kind}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of legodnn's temporary names (``temp_path``): a write in
    progress, by this or another live process, or left by a dead one."""
    return _TEMP.match(name) is not None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(directory: PathLike, name: Optional[str] = None) -> int:
    """Remove the temporary files and folders that dead legodnn writers left in ``directory``.

    Only names of legodnn's own pattern are considered (for ``name`` only, if given), and
    only those of processes that no longer run. A ``.old`` folder whose target is
    missing is the previous store of a writer killed between its two renames (on systems
    without an atomic exchange): it is put back instead of removed. Returns how many
    entries were removed or restored.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    count = 0
    for entry in sorted(directory.iterdir()):
        m = _TEMP.match(entry.name)
        if not m or (name is not None and m["name"] != name) or _alive(int(m["pid"])):
            continue
        target = directory / m["name"]
        if m["kind"] == "old" and not target.exists():
            os.replace(entry, target)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        count += 1
    return count


def fsync_dir(directory: PathLike) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and a rename."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode follows the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_tensors_atomic(path: PathLike, tensors: Mapping[str, torch.Tensor]) -> str:
    """Save tensors as one safetensors file, atomically; returns the file's SHA-256.

    Serialized once in memory, hashed and written from the same bytes: no second read.
    """
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share memory (tied weights)
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = save(cpu, metadata={"format": "pt"})
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def copy_file_atomic(src: PathLike, dst: PathLike) -> None:
    dst = Path(dst)
    tmp = temp_path(dst)
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem or kernel cannot
        return False
    raise OSError(err, os.strerror(err), str(b))


def exchange_paths(new: Path, target: Path) -> Optional[Path]:
    """Put the folder ``new`` at ``target``; returns where the previous ``target`` now is.

    With an atomic exchange (Linux) there is no instant without a complete ``target``.
    Elsewhere the previous folder is first renamed to a ``.old`` name, which
    :func:`remove_stale_temps` puts back if the writer dies before the second rename.
    """
    if not target.exists():
        os.replace(new, target)
        fsync_dir(target.parent)
        return None
    if _renameat2_exchange(new, target):
        fsync_dir(target.parent)
        return new  # the old folder now sits at the temporary name
    old = temp_path(target, "old")
    os.replace(target, old)
    os.replace(new, target)
    fsync_dir(target.parent)
    return old


def save_torch_atomic(path: PathLike, obj: object) -> None:
    """``torch.save`` of plain tensors and numbers (optimizer state), atomically.

    Read back with ``torch.load(weights_only=True)``: no code is unpickled.
    """
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())
