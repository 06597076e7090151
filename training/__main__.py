"""`python -m training ...` = `engine train ...`, for launchers such as ``torchrun --nproc-per-node N -m training``.

Each process reads RANK/WORLD_SIZE from the environment torchrun sets; only rank 0 logs and checkpoints.
"""

from __future__ import annotations

import sys

import typer

from engine.console import run_app
from training.cli import train_command


def main(argv: list[str] | None = None) -> int:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train_command)
    try:
        return run_app(app, argv, "python -m training")
    finally:
        from training.distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
