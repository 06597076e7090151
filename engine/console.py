"""Where the CLI prints its tables.

rich sizes a table to the terminal, and to 80 columns when output is piped (files, CI logs, `| less`), which
wraps paths and captions into unreadable cells. Piped output therefore gets a fixed wide console.
"""

from __future__ import annotations

import sys

PIPED_WIDTH = 160


def table_console():
    from rich.console import Console

    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else PIPED_WIDTH)
