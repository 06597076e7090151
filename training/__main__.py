"""`python -m training ...` = `engine train ...`, for launchers such as ``torchrun --nproc-per-node N -m training``.

Each process reads RANK/WORLD_SIZE from the environment torchrun sets; only rank 0 logs and checkpoints.
"""

from __future__ import annotations

import sys

import typer

from engine.errors import EngineError
from training.cli import train_command


def main(argv: list[str] | None = None) -> int:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train_command)
    try:
        app(args=argv, prog_name="python -m training", standalone_mode=True)
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 1
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        from training.distributed import shutdown

        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
