"""The ``engine`` command: maps command names to the functions of the packages that own them.

Each package exposes a typer app or command in its own ``cli`` module; this file only registers them and turns
``EngineError`` into one clear line on stderr with a non-zero exit (no traceback for user mistakes:
:func:`engine.console.run_app`, shared with ``python -m training``).
"""

from __future__ import annotations

import sys

import typer

from engine.console import run_app

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
    from training.cli import query_bank_command, soup_command, train_command, train_instruction_command

    app.add_typer(data_app, name="data")
    app.command("train-instruction")(train_instruction_command)
    app.command("train")(train_command)
    app.command("soup")(soup_command)
    app.command("query-bank")(query_bank_command)
    app.add_typer(index_app, name="index")
    app.command("query")(query_command)
    app.command("serve")(serve_command)
    app.command("eval")(eval_command)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    return run_app(app, argv, "engine")


if __name__ == "__main__":
    sys.exit(main())
