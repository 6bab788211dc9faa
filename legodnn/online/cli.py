"""``legodnn-runtime``: ``legodnn serve`` under its first name.

    legodnn-runtime --blocks runs/x/trained --model cv_tasks:cifar_resnet18 --model-kwargs '{"base_width": 8}' \\
        --max-latency-ms 20 --memory-fraction 0.5 --duration 10

The device needs the model code (``--model``: ``cv_tasks:NAME``, ``torchvision:NAME``,
``timm:NAME`` or ``package.module:function``), the trained blocks directory with
``block_profile.json`` and ``latency_profile.json``, and only torch and numpy. The input
shape comes from the store's manifest. The flags, checks and messages are those of
``legodnn serve`` (:mod:`legodnn.cli.online`), with ``legodnn-runtime`` in the error lines.

Errors are one line on stderr (``--debug`` shows the traceback). Exit codes: 0 served,
1 a legodnn error (a missing, foreign or stale store, an infeasible budget with
``--no-fallback``) or an unexpected failure, 2 a wrong command line, 130 interrupted
before serving began.
"""

from __future__ import annotations

from typing import List, Optional

__all__ = ["main"]

PROG = "legodnn-runtime"


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``legodnn serve`` as ``legodnn-runtime`` and return its exit code; never raises."""
    from ..cli.main import run_alias

    return run_alias("serve", argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
