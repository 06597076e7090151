"""Where the CLI prints: its tables, and the one ``error:`` line a user mistake gets (:func:`run_app`).

rich sizes a table to the terminal, and to 80 columns when output is piped (files, CI logs, `| less`), which
wraps paths and captions into unreadable cells. Piped output therefore gets a fixed wide console.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from engine.errors import EngineError

if TYPE_CHECKING:
    import typer

PIPED_WIDTH = 160


def table_console():
    from rich.console import Console

    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else PIPED_WIDTH)


def run_app(typer_app: "typer.Typer", argv: list[str] | None, prog_name: str) -> int:
    """Run a typer app and turn user mistakes into one ``error:`` line and an exit code (no traceback)."""
    try:
        typer_app(args=argv, prog_name=prog_name, standalone_mode=True)
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 1
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the environment refused (permissions, a special file): one line, not a traceback
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
