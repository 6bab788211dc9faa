"""The flags every ``legodnn`` subcommand shares, and the argparse types that check them.

One definition per flag, so ``--model``, ``--blocks``, ``--threads`` ... are spelled,
checked and explained alike in every subcommand. A type that refuses a value raises
``argparse.ArgumentTypeError`` with the whole message (what was given, what is allowed,
an example), which :class:`Parser` turns into the command's one error line.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import LegoDNNError
from ..validation import check_device, check_float, check_int

__all__ = [
    "UsageError",
    "Parser",
    "int_arg",
    "float_arg",
    "device_arg",
    "json_object",
    "model_spec",
    "float_list",
    "input_size_arg",
    "add_model",
    "add_common",
    "add_data",
    "add_budgets",
]

MODEL_FORMS = "'torchvision:NAME', 'timm:NAME', 'cv_tasks:NAME' or 'package.module:function'"


class UsageError(Exception):
    """A command line that cannot work (exit code 2): a wrong flag, or something it names
    that does not exist (a model, a weights file, a data folder). ``prog`` is the command
    whose ``--help`` the error line points to; raised ``from`` the original error so
    ``--debug`` shows where the user's code failed."""

    def __init__(self, message: str, prog: str = "") -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are exceptions, not a usage dump and an exit.

    argparse prints its usage and calls ``sys.exit(2)``; ``main`` needs the message
    instead, to print it as the command's one error line and to return the code, so
    tests (and callers) can run ``main([...])`` without catching ``SystemExit``.
    Subparsers are of this class too (argparse makes them of the parent's class).
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        # "argument --threads: --threads must be ...": the checks already name the option
        raise UsageError(re.sub(r"^argument (\S+): (?=\1\b)", "", message), self.prog)


def _checked(check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a :mod:`legodnn.validation` check as an argparse ``type=``: argparse shows the
    message of an ``argparse.ArgumentTypeError`` but replaces that of a ``ValueError``
    (which legodnn's errors are) by "invalid value", so the message is carried over."""
    try:
        return check(*args, **kwargs)
    except LegoDNNError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def int_arg(name: str, minimum: int, example: str) -> Callable[[str], int]:
    """An argparse type for a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}; e.g. {example}") from None
        return _checked(check_int, name, value, minimum=minimum, hint=f"e.g. {example}")

    return parse


def float_arg(name: str, example: str, maximum: Optional[float] = None, finite: bool = True) -> Callable[[str], float]:
    """An argparse type for a number > 0 (and <= ``maximum``); NaN never passes, and
    infinity only where ``finite`` is False (``--duration inf``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}; e.g. {example}") from None
        return _checked(check_float, name, value, minimum=0.0, min_inclusive=False, maximum=maximum,
                        finite=finite, hint=f"e.g. {example}")

    return parse


def device_arg(text: str) -> str:
    """``--device``, refused here when torch cannot parse it or this machine lacks it
    (``cuda`` without a GPU would otherwise fail at the first tensor moved there)."""
    return _checked(check_device, "--device", text)


def model_spec(text: str) -> str:
    """``--model`` must have the ``prefix:name`` form; whether the model exists is checked
    after parsing (:func:`legodnn.cli.models.build_model`), where ``--debug`` can show
    why an import failed."""
    module, _, name = text.partition(":")
    if not module or not name:
        raise argparse.ArgumentTypeError(
            f"--model must name a model as {MODEL_FORMS}, got {text!r}; e.g. cv_tasks:cifar_resnet18 or "
            "zoo:FunctionalNet")
    return text


def json_object(text: str) -> Dict[str, Any]:
    """``--model-kwargs`` as a dict: keyword arguments need a JSON object, and a list or
    a number would only fail later as "argument after ** must be a mapping"."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--model-kwargs is not valid JSON ({exc}), got {text!r}; e.g. '{{\"num_classes\": 10}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"--model-kwargs must be a JSON object of keyword arguments, got a JSON {type(value).__name__} "
            f"{text!r}; e.g. '{{\"num_classes\": 10}}'")
    return value


def float_list(name: str, example: str, low: float, high: float) -> Callable[[str], List[float]]:
    """An argparse type for comma-separated numbers in ``[low, high)``: sparsities, budgets."""

    def parse(text: str) -> List[float]:
        try:
            values = [float(t) for t in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be comma-separated numbers, got {text!r}; e.g. {example}") from None
        bad = [v for v in values if not (low <= v < high) or math.isnan(v)]
        if bad:
            raise argparse.ArgumentTypeError(
                f"{name} values must lie in [{low:g}, {high:g}), got {text!r}; e.g. {example}")
        return values

    return parse


def positive_list(name: str, example: str) -> Callable[[str], List[float]]:
    """An argparse type for comma-separated budgets, each a finite number > 0."""
    one = float_arg(name, example)

    def parse(text: str) -> List[float]:
        return [one(t) for t in text.split(",")]

    return parse


def input_size_arg(text: str) -> Tuple[int, ...]:
    """``--input-size 1,3,32,32``: the model's input shape, batch first."""
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"--input-size must be the input shape as positive whole numbers, batch first, got {text!r}; "
            "e.g. --input-size 1,3,32,32")
    return shape


def add_model(parser: argparse.ArgumentParser, weights: bool = True) -> None:
    """``--model``, ``--model-kwargs`` and (where the weights matter) ``--weights``."""
    parser.add_argument("--model", required=True, type=model_spec, metavar="SPEC",
                        help=f"the model, as {MODEL_FORMS}")
    parser.add_argument("--model-kwargs", default={}, type=json_object, metavar="JSON",
                        help="keyword arguments for the model's builder, a JSON object (default: {})")
    if weights:
        parser.add_argument("--weights", default=None, metavar="FILE",
                            help="trained weights of the model, a .safetensors file (default: the builder's own)")


def add_common(parser: argparse.ArgumentParser, threads_help: str = "torch CPU threads, >= 1 (default: torch's)"
               ) -> None:
    """``--device``, ``--threads``, ``--quiet`` and ``--debug``: on every subcommand, so
    they go after the subcommand's name like its other flags."""
    parser.add_argument("--device", default="cpu", type=device_arg, help="cpu, cuda, cuda:N, ... (default: cpu)")
    parser.add_argument("--threads", type=int_arg("--threads", 1, "--threads 4"), default=None, help=threads_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its message")


def add_data(parser: argparse.ArgumentParser) -> None:
    """``--data`` and how much of it to read."""
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="'digits' (scikit-learn's, no download), 'cifar10:ROOT' (ROOT/cifar-10-batches-py) "
                             "or an ImageFolder path with train/ and test/ (or val/) class sub-folders")
    parser.add_argument("--batch-size", type=int_arg("--batch-size", 1, "--batch-size 64"), default=64,
                        help="batch size (default: 64)")
    parser.add_argument("--subset", type=int_arg("--subset", 1, "--subset 256"), default=None,
                        help="use this many random images of each split, for quick runs (default: all)")


def add_budgets(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """``--max-latency-ms`` and ``--max-memory-mb``; ``several``: comma-separated lists."""
    make = positive_list if several else float_arg
    each = " (comma-separated for several budgets)" if several else ""
    parser.add_argument("--max-latency-ms", type=make("--max-latency-ms", "--max-latency-ms 20"), default=None,
                        metavar="MS", help=f"latency budget in milliseconds{each} (default: none)")
    parser.add_argument("--max-memory-mb", type=make("--max-memory-mb", "--max-memory-mb 64"), default=None,
                        metavar="MB", help=f"memory budget in MB{each} (default: none)")
