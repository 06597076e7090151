"""Bounds on what one ``--where`` filter may cost, and on where it may reach (with ``indexing.sql_filter``).

* **Time budget.** ``run_with_budget`` runs the filter's statement with a watchdog timer that calls DuckDB's
  ``interrupt()`` on that statement's own cursor after ``budget_s`` (``DEFAULT_FILTER_BUDGET_S``; ``engine
  query/serve --filter-timeout``). The filter then fails alone with one line (HTTP 400); other queries run on
  their own cursors and threads and are not held up.
* **Regular-expression size.** DuckDB checks for an interrupt only between vectors of 2048 rows, and RE2 runs
  a pattern whose compiled program outgrows its DFA memory (``([^x]{1,100}[^y]{1,100}){1,9}q``: counted
  repetitions multiply) a thousand times slower, so one vector could take minutes before the watchdog is
  heard. The pattern of ``regexp_matches`` / ``regexp_full_match`` / ``SIMILAR TO`` must therefore be a
  quoted constant (or a column) whose estimated size, with repetitions expanded, is at most
  ``MAX_REGEX_SIZE``.
* **Parentheses.** The condition's parentheses, outside string constants and quoted names (DuckDB's own
  tokenizer decides), must balance and never close more than they opened: the condition stays inside the
  ``WHERE (...)`` of the template, so it cannot append a clause (``1=1) WINDOW w AS (ORDER BY getenv('HOME')``:
  DuckDB's serialized parse tree leaves named windows out, so the tree comparison alone did not see it).
"""

from __future__ import annotations

import threading
from typing import Any

from engine.errors import EngineError

DEFAULT_FILTER_BUDGET_S = 2.0
MAX_REGEX_SIZE = 500
REGEX_FUNCTIONS = frozenset({"regexp_matches", "regexp_full_match"})


class FilterTimeout(EngineError):
    """A filter that ran past its time budget and was interrupted."""


def check_parentheses(where: str, label: str) -> None:
    """Refuse a condition whose parentheses would close the template's ``WHERE (``."""
    import duckdb

    tokens = duckdb.tokenize(where)
    depth = 0
    for position, (start, kind) in enumerate(tokens):
        if kind != duckdb.token_type.operator:
            continue
        stop = tokens[position + 1][0] if position + 1 < len(tokens) else len(where)
        for character in where[start:stop]:
            if character == "(":
                depth += 1
            elif character == ")":
                depth -= 1
                if depth < 0:
                    raise EngineError(f"{label}: a ')' closes more than the condition opened; only a condition "
                                      "is accepted (no clauses after it)")
    if depth != 0:
        raise EngineError(f"{label}: {depth} '(' not closed")


def check_regex_call(node: dict, label: str) -> None:
    """For a regexp function node of the parse tree: its pattern is a constant of bounded size, or a column."""
    if str(node.get("function_name", "")).lower() not in REGEX_FUNCTIONS:
        return
    arguments = node.get("arguments") or node.get("children") or []
    if len(arguments) < 2:
        return
    pattern = arguments[1]
    pattern = pattern.get("expression", pattern) if isinstance(pattern, dict) else pattern
    kind = pattern.get("class") if isinstance(pattern, dict) else None
    if kind == "COLUMN_REF":
        return
    text = _constant_text(pattern) if kind == "CONSTANT" else None
    if not isinstance(text, str):
        raise EngineError(f"{label}: the pattern of {node.get('function_name')} must be a quoted constant")
    size = regex_size(text)
    if size > MAX_REGEX_SIZE:
        raise EngineError(f"{label}: the pattern {text[:60]!r} is too complex (about {size} steps with its "
                          f"repetitions expanded; at most {MAX_REGEX_SIZE}): use fewer or smaller {{m,n}} counts")


def _constant_text(node: dict) -> str | None:
    """The text of a string constant node (DuckDB serializes it as ``literal.text`` or ``value.value``)."""
    literal = node.get("literal")
    if isinstance(literal, dict) and isinstance(literal.get("text"), str):
        return literal["text"]
    value = node.get("value")
    if isinstance(value, dict) and isinstance(value.get("value"), str):
        return value["value"]
    return None


def regex_size(pattern: str) -> int:
    """An upper estimate of a regular expression's compiled size: one per atom, counted repetitions
    (``{m,n}``) multiply the atom or group before them, groups nest."""
    stack = [[0, 0]]  # per open group: [size so far, size of its last atom]
    index, length = 0, len(pattern)
    while index < length:
        character = pattern[index]
        atom = 1
        if character == "\\":
            index += 2
        elif character == "[":
            index = _class_end(pattern, index)
        elif character == "(":
            stack.append([0, 0])
            index += 1
            continue
        elif character == ")":
            closed = stack.pop()[0] if len(stack) > 1 else 0
            atom = closed + 1
            index += 1
        elif character == "{" and _repeat(pattern, index) is not None:
            times, index = _repeat(pattern, index)
            last = stack[-1][1]
            stack[-1][0] += last * (times - 1)
            stack[-1][1] = last * times
            continue
        else:
            index += 1
            if character in "*+?|":
                stack[-1][0] += 1
                stack[-1][1] = 0 if character == "|" else stack[-1][1]
                continue
        stack[-1][0] += atom
        stack[-1][1] = atom
    return sum(group[0] for group in stack)


def _class_end(pattern: str, index: int) -> int:
    position = index + 1
    if pattern[position:position + 1] == "^":
        position += 1
    if pattern[position:position + 1] == "]":
        position += 1
    while position < len(pattern) and pattern[position] != "]":
        position += 2 if pattern[position] == "\\" else 1
    return position + 1


def _repeat(pattern: str, index: int) -> tuple[int, int] | None:
    """(how many copies ``{m}``, ``{m,}``, ``{m,n}``, ``{,n}`` make, index after it), or None if not one."""
    close = pattern.find("}", index)
    if close < 0:
        return None
    low, comma, high = pattern[index + 1:close].partition(",")
    low, high = low.strip(), high.strip()
    if not (low.isdigit() or high.isdigit()) or not all(part.isdigit() for part in (low, high) if part):
        return None
    counts = [int(part) for part in (low, high) if part]
    times = max(counts) + (1 if comma and not high else 0)
    return max(times, 1), close + 1


def run_with_budget(cursor: Any, sql: str, budget_s: float | None, label: str) -> list[int]:
    """``sql``'s first column on ``cursor``, interrupted after ``budget_s`` seconds (None: no budget)."""
    return [row[0] for row in rows_with_budget(cursor, sql, budget_s, label)]


def rows_with_budget(cursor: Any, sql: str, budget_s: float | None, label: str,
                     params: dict | None = None) -> list[tuple]:
    """``sql``'s rows on ``cursor`` (with bound ``params``), interrupted after ``budget_s`` seconds (None or 0:
    no budget)."""
    import duckdb

    if budget_s is None or budget_s <= 0:
        return cursor.execute(sql, params).fetchall() if params else cursor.execute(sql).fetchall()
    lock = threading.Lock()
    state = {"running": True}  # interrupt only while this statement runs (never a later one on the cursor)

    def interrupt() -> None:
        with lock:
            if state["running"]:
                cursor.interrupt()

    watchdog = threading.Timer(budget_s, interrupt)
    watchdog.daemon = True
    watchdog.start()
    try:
        rows = cursor.execute(sql, params).fetchall() if params else cursor.execute(sql).fetchall()
    except duckdb.InterruptException:
        raise FilterTimeout(f"{label}: the filter ran longer than its {budget_s:g} s budget and was stopped "
                            "(--filter-timeout); simplify it, e.g. fewer regular expressions") from None
    finally:
        with lock:
            state["running"] = False
        watchdog.cancel()
    return rows
