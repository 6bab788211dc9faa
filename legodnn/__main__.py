"""``python -m legodnn``: the ``legodnn`` command, for environments without its script on PATH."""

from legodnn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
