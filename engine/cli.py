"""The ``engine`` command: maps command names to the functions of the packages that own them.

Each package exposes a typer app or command in its own ``cli`` module; this file only registers them and turns
``EngineError`` into one clear line on stderr with a non-zero exit (no traceback for user mistakes).
"""

from __future__ import annotations

import sys

import typer

from engine.errors import EngineError

app = typer.Typer(
    name="engine",
    help="Remote-sensing image-text retrieval: check data, train PIR encoders, index, search, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    """Attach sub-commands. Every ``cli`` module imported here is torch-free at import time, so ``engine --help``
    and ``engine data check`` start fast; the heavy imports happen inside the command functions."""
    from engine.data.cli import data_app
    from engine.evaluation.cli import eval_command
    from engine.query.cli import query_command, serve_command
    from indexing.cli import index_app
    from training.cli import train_command, train_instruction_command

    app.add_typer(data_app, name="data")
    app.command("train-instruction")(train_instruction_command)
    app.command("train")(train_command)
    app.add_typer(index_app, name="index")
    app.command("query")(query_command)
    app.command("serve")(serve_command)
    app.command("eval")(eval_command)


_register_commands()


def run_app(typer_app: typer.Typer, argv: list[str] | None, prog_name: str) -> int:
    """Run a typer app and turn user mistakes into one ``error:`` line and an exit code (no traceback)."""
    try:
        typer_app(args=argv, prog_name=prog_name, standalone_mode=True)
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 1
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    return run_app(app, argv, "engine")


if __name__ == "__main__":
    sys.exit(main())
