"""``legodnn COMMAND``: the parser with its subcommands, and the one place errors become exit codes.

Exit codes: 0 done, 1 a legodnn error (a missing, foreign or stale store, data that do
not fit the model, an infeasible budget) or an unexpected failure, 2 a wrong command
line (a flag, or a model, weights file or data set it names that does not exist), 130
interrupted. Every error is one line on stderr, ``prog: error: message``; ``--debug``
prints the traceback instead. Warnings are one line each too.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional

from ..errors import LegoDNNError
from ..version import __version__
from . import inspect_store, offline, online
from .args import Parser, UsageError

__all__ = ["main", "run_alias", "COMMANDS", "build_parser"]

USAGE_ERROR = 2
LEGODNN_ERROR = 1
INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    """A subcommand: its flags, what it runs, and the examples its ``--help`` ends with."""

    name: str
    summary: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: str


COMMANDS = [
    Command("extract", "cut a model into blocks and write every pruned descendant (offline, step 1)",
            offline.extract_arguments, offline.extract, offline.EXTRACT_EXAMPLES),
    Command("retrain", "distil every descendant from the teacher's blocks (offline, step 2)",
            offline.retrain_arguments, offline.retrain, offline.RETRAIN_EXAMPLES),
    Command("profile", "measure each descendant's accuracy drop, size and FLOPs (offline, step 3)",
            offline.profile_arguments, offline.profile, offline.PROFILE_EXAMPLES),
    Command("latency", "time every descendant on this device (on the device, step 4)",
            online.latency_arguments, online.latency, online.LATENCY_EXAMPLES),
    Command("optimize", "show the most accurate configuration for budgets of latency and memory",
            online.optimize_arguments, online.optimize, online.OPTIMIZE_EXAMPLES),
    Command("serve", "serve the model, hot-swapping blocks as the budget moves (also: legodnn-runtime)",
            online.serve_arguments, online.serve, online.SERVE_EXAMPLES),
    Command("export-onnx", "write one composition as an ONNX model",
            online.export_onnx_arguments, online.export_onnx, online.EXPORT_EXAMPLES),
    Command("inspect", "show a store's blocks, descendants, profiles and hashes as a table",
            inspect_store.inspect_arguments, inspect_store.inspect, inspect_store.INSPECT_EXAMPLES),
]

DESCRIPTION = """Block-grained scaling of CNNs: extract a model's blocks and their pruned descendants,
retrain and profile them, then pick (and serve) the most accurate composition for a budget.

the pipeline, in order (each command's --help has examples):
  extract -> retrain -> profile -> latency -> optimize | serve | export-onnx;  inspect at any point
"""


def _add_command(subparsers: argparse._SubParsersAction, command: Command) -> None:
    parser = subparsers.add_parser(command.name, help=command.summary, description=command.summary,
                                   epilog=command.examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    command.arguments(parser)
    parser.set_defaults(run=command.run, prog=parser.prog)


def build_parser(prog: str = "legodnn") -> Parser:
    """The ``legodnn`` parser: one subparser per entry of :data:`COMMANDS`."""
    parser = Parser(prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"legodnn {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for command in COMMANDS:
        _add_command(subparsers, command)
    return parser


def _one_line(exc: BaseException) -> str:
    """The error's message on one line (an empty message shows the error's type)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _fail(prog: str, code: int, message: str, exc: BaseException, debug: bool) -> int:
    """Report an error: its traceback with ``--debug``, else the one error line."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    else:
        print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def _execute(parser: Parser, argv: List[str]) -> int:
    """Parse ``argv`` and run its command; every outcome becomes an exit code."""
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        prog = exc.prog or parser.prog
        print(f"{prog}: error: {_one_line(exc)} (see {prog} --help)", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as exc:  # --help and --version print and exit 0
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else USAGE_ERROR
    if getattr(args, "run", None) is None:
        names = ", ".join(c.name for c in COMMANDS)
        print(f"{parser.prog}: error: choose a command: {names} (see {parser.prog} --help)", file=sys.stderr)
        return USAGE_ERROR
    prog = args.prog

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        print(f"{prog}: warning: {_one_line(Warning(message))}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            return args.run(args)
    except UsageError as exc:
        return _fail(prog, USAGE_ERROR, _one_line(exc), exc, args.debug)
    except LegoDNNError as exc:
        return _fail(prog, LEGODNN_ERROR, _one_line(exc), exc, args.debug)
    except KeyboardInterrupt as exc:
        return _fail(prog, INTERRUPTED, "interrupted", exc, args.debug)
    except Exception as exc:  # a bug or the environment: still one line, --debug for more
        return _fail(prog, LEGODNN_ERROR, f"unexpected {type(exc).__name__}: {_one_line(exc)} (run with --debug for "
                                          "the traceback)", exc, args.debug)


def main(argv: Optional[List[str]] = None, prog: str = "legodnn") -> int:
    """Run ``legodnn`` and return its exit code; never raises (``SystemExit`` included).

    A usage error found while parsing has no traceback worth showing (argparse's
    internals), so it is one line even with ``--debug``.
    """
    return _execute(build_parser(prog), sys.argv[1:] if argv is None else list(argv))


def run_alias(name: str, argv: Optional[List[str]], prog: str) -> int:
    """Run one subcommand as a command of its own (``legodnn-runtime`` is ``legodnn serve``):
    the same flags, checks and exit codes, its errors and ``--help`` under ``prog``."""
    command = next(c for c in COMMANDS if c.name == name)
    parser = Parser(prog=prog, description=command.summary, epilog=command.examples,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    command.arguments(parser)
    parser.set_defaults(run=command.run, prog=prog)
    return _execute(parser, sys.argv[1:] if argv is None else list(argv))
