"""``legodnn-runtime``: start the on-device loop from a blocks directory and its profiles.

    legodnn-runtime --blocks runs/x/trained --model cv_tasks:get_model --model-kwargs '{"name": "cifar_resnet18"}' \\
        --max-latency-ms 20 --memory-fraction 0.5 --duration 10

The device needs the model code (``--model`` names a factory, ``module:function``), the
trained blocks directory with ``block_profile.json`` and ``latency_profile.json``, and
only torch and numpy. The input shape comes from the store's manifest.

Errors are one line on stderr (``--debug`` shows the traceback). Exit codes: 0 served,
1 a legodnn error (a missing, foreign or stale store, an infeasible budget with
``--no-fallback``) or an unexpected failure, 2 a wrong command line, 130 interrupted
before serving began.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..errors import LegoDNNError
from ..validation import check_device, check_float, check_int
from .latency_profile import LatencyProfile
from .optimizer import ScalingOptimizer
from .runtime import Budget, OnDeviceRuntime, available_memory_bytes

__all__ = ["main"]

PROG = "legodnn-runtime"
USAGE_ERROR = 2
LEGODNN_ERROR = 1
INTERRUPTED = 130


class UsageError(Exception):
    """A command line that cannot work (exit code 2), found after parsing: the model
    factory it names cannot be imported, fails, or builds no ``nn.Module``. Raised
    ``from`` the original error so ``--debug`` shows where the user's code failed."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are exceptions, not a usage dump and an exit.

    argparse prints its usage and calls ``sys.exit(2)``; ``main`` needs the message
    instead, to print it as the CLI's one error line and to return the code, so tests
    (and callers) can run ``main([...])`` without catching ``SystemExit``.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        # "argument --threads: --threads must be ...": the checks already name the option
        raise UsageError(re.sub(r"^argument (\S+): (?=\1\b)", "", message))


def _checked(check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a :mod:`legodnn.validation` check as an argparse ``type=``: argparse shows the
    message of an ``argparse.ArgumentTypeError`` but replaces that of a ``ValueError``
    (which legodnn's errors are) by "invalid value", so the message is carried over."""
    try:
        return check(*args, **kwargs)
    except LegoDNNError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_arg(name: str, minimum: int, example: str) -> Callable[[str], int]:
    """An argparse type for a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}; e.g. {example}") from None
        return _checked(check_int, name, value, minimum=minimum, hint=f"e.g. {example}")

    return parse


def _float_arg(name: str, example: str, maximum: Optional[float] = None, finite: bool = True) -> Callable[[str], float]:
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


def _device_arg(text: str) -> str:
    """``--device``, refused here when torch cannot parse it or this machine lacks it
    (``cuda`` without a GPU would otherwise fail at the first tensor moved there)."""
    return _checked(check_device, "--device", text)


def _factory_spec(text: str) -> str:
    """``--model`` must have the ``module:function`` form; whether the module exists is
    checked after parsing (:func:`_build_model`), where ``--debug`` can show why an
    import failed."""
    module, _, name = text.partition(":")
    if not module or not name:
        raise argparse.ArgumentTypeError(
            f"--model must name a factory as 'package.module:function', got {text!r}; e.g. zoo:FunctionalNet")
    return text


def _json_object(text: str) -> Dict[str, Any]:
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


def _build_model(spec: str, kwargs: Dict[str, Any]) -> torch.nn.Module:
    """Import the factory ``module:function`` and call it; every way that fails is a
    :class:`UsageError` naming what was given."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            # the module exists but imports something missing: say that, not "no module"
            raise UsageError(f"--model {spec!r}: importing {module_name!r} failed: {exc}") from exc
        raise UsageError(
            f"--model {spec!r}: no module named {module_name!r}; install it or add its folder to PYTHONPATH") from exc
    except Exception as exc:
        raise UsageError(f"--model {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, name, None)
    if factory is None:
        raise UsageError(f"--model {spec!r}: module {module_name!r} has no attribute {name!r}")
    if not callable(factory):
        raise UsageError(f"--model {spec!r}: {name!r} is a {type(factory).__name__}, not a function or class")
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise UsageError(
            f"--model {spec!r} with --model-kwargs {json.dumps(kwargs)} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"--model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", required=True, help="trained blocks directory with its profiles")
    parser.add_argument("--model", required=True, type=_factory_spec, help="model factory, module:function")
    parser.add_argument("--model-kwargs", default={}, type=_json_object,
                        help="keyword arguments for the factory, a JSON object (default: {})")
    parser.add_argument("--device", default="cpu", type=_device_arg, help="cpu, cuda, cuda:N, ... (default: cpu)")
    parser.add_argument("--threads", type=_int_arg("--threads", 1, "--threads 4"), default=None,
                        help="torch CPU threads, >= 1 (default: the latency profile's)")
    parser.add_argument("--max-latency-ms", type=_float_arg("--max-latency-ms", "--max-latency-ms 20"), default=None,
                        help="latency budget in milliseconds (default: none)")
    memory = parser.add_mutually_exclusive_group()
    memory.add_argument("--memory-fraction", type=_float_arg("--memory-fraction", "--memory-fraction 0.5", maximum=1.0),
                        default=None, help="give the model this fraction, in (0, 1], of the memory available, "
                                           "polled while serving (default: no memory limit)")
    memory.add_argument("--max-memory-mb", type=_float_arg("--max-memory-mb", "--max-memory-mb 64"), default=None,
                        help="a fixed memory budget in MB instead")
    parser.add_argument("--no-fallback", action="store_true",
                        help="fail (exit 1) when the first budget cannot be met, instead of serving the closest "
                             "configuration")
    parser.add_argument("--duration", type=_float_arg("--duration", "--duration 10", finite=False), default=10.0,
                        help="seconds to serve, > 0; 'inf' serves until interrupted (default: 10)")
    parser.add_argument("--poll", type=_float_arg("--poll", "--poll 0.1"), default=0.1,
                        help="budget poll interval in seconds, > 0 (default: 0.1)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its message")
    return parser


def _set_threads(threads: Optional[int], blocks: str) -> None:
    """Set torch's CPU threads before the optimizer is built: it warns when they differ
    from those latency was profiled with, and the default (the profile's own count) must
    not draw that warning."""
    if threads is None:
        try:
            threads = LatencyProfile.load(Path(blocks)).num_threads
        except LegoDNNError:
            return  # no readable profile: from_store reports the store's problem in its own words
    torch.set_num_threads(threads)


def _serve(args: argparse.Namespace) -> int:
    """Build the model and the optimizer, then serve for ``--duration`` seconds."""
    model = _build_model(args.model, args.model_kwargs)
    _set_threads(args.threads, args.blocks)
    optimizer = ScalingOptimizer.from_store(args.blocks, model, args.device)
    input_size = optimizer.store.manifest.model_input_size
    latency = None if args.max_latency_ms is None else args.max_latency_ms / 1e3

    def budget() -> Budget:
        if args.max_memory_mb is not None:
            return Budget(latency, args.max_memory_mb * 1e6)
        if args.memory_fraction is not None:
            return Budget(latency, args.memory_fraction * available_memory_bytes())
        return Budget(latency, None)

    if args.no_fallback:
        first = budget()  # raises InfeasibleBudgetError, saying which budget binds
        optimizer.update_model(first.max_latency_s, first.max_memory_bytes, fallback=False)

    x = torch.rand(input_size, device=args.device)
    served = 0
    start = time.perf_counter()
    with OnDeviceRuntime(optimizer, budget, poll_interval_s=args.poll, fallback=not args.no_fallback) as runtime:
        try:
            while time.perf_counter() - start < args.duration:  # inf: until interrupted
                runtime.infer(x)
                served += 1
        except KeyboardInterrupt:
            pass
    elapsed = time.perf_counter() - start
    print(f"served {served} inferences in {elapsed:.1f} s ({served / elapsed:.1f}/s); "
          f"{len(runtime.events)} budget change(s)")
    return 0


def _one_line(exc: BaseException) -> str:
    """The error's message on one line (an empty message shows the error's type)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _fail(code: int, message: str, exc: BaseException, debug: bool) -> int:
    """Report an error: its traceback with ``--debug``, else the one error line."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    else:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI and return its exit code; never raises (``SystemExit`` included).

    A usage error found while parsing has no traceback worth showing (argparse's
    internals), so it is one line even with ``--debug``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {_one_line(exc)} (see {PROG} --help)", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as exc:  # --help prints and exits 0
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else USAGE_ERROR
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        return _serve(args)
    except UsageError as exc:
        return _fail(USAGE_ERROR, _one_line(exc), exc, args.debug)
    except LegoDNNError as exc:
        return _fail(LEGODNN_ERROR, _one_line(exc), exc, args.debug)
    except KeyboardInterrupt as exc:
        return _fail(INTERRUPTED, "interrupted", exc, args.debug)
    except Exception as exc:  # a bug or the environment (no /proc/meminfo): still one line, --debug for more
        return _fail(LEGODNN_ERROR, f"unexpected {type(exc).__name__}: {_one_line(exc)} (run with --debug for the "
                                    "traceback)", exc, args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
