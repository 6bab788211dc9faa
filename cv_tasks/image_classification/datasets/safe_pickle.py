"""Load the pickles that data sets ship (CIFAR's batches) without running code from them.

``pickle.load`` calls whatever function a file names, so a tampered data file could run
anything. ``RestrictedUnpickler`` resolves only the few names that numpy arrays need;
dicts, lists, strings and numbers need none. Any other name is refused before it is
imported, with ``UnsafePickleError``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Tuple, Union

import numpy as np

from cv_tasks.image_classification.datasets.errors import UnsafePickleError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

__all__ = ["ALLOWED_GLOBALS", "RestrictedUnpickler", "load_pickle"]

#: (module, name) -> object: everything a pickled numpy array refers to, and nothing else.
#: Pickles written by numpy 1.x (CIFAR's) say ``numpy.core``; numpy 2 writes ``numpy._core``.
ALLOWED_GLOBALS: Dict[Tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain Python data, and refuses everything else.

    ``source`` names the file in error messages.
    """

    def __init__(self, file: Any, *, source: str = "<pickle>", encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source} refers to {module}.{name}, which a data file never needs; refusing to load it "
                "(only numpy arrays and plain lists, dicts, strings and numbers are read). The file is not the "
                "data set's original: delete it and put the original in its place"
            ) from None


def load_pickle(path: Union[str, Path], encoding: str = "latin1") -> Any:
    """Load one pickle file with :class:`RestrictedUnpickler`.

    ``encoding="latin1"`` reads the byte strings of Python 2 pickles (CIFAR's) as ``str``
    and lets numpy rebuild the arrays they hold.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            return RestrictedUnpickler(f, source=str(path), encoding=encoding).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise pickle.UnpicklingError(
                f"{path} is not a readable pickle ({type(exc).__name__}: {exc}); it may be truncated: "
                "delete it and extract the data set again"
            ) from exc
