"""User ``--where`` filters are data, not code.

A filter is one SQL condition over the catalog's own columns (``split = 'test' AND class = 'airport'``). It
reaches DuckDB from the CLI and from ``engine serve`` (``GET /query?where=``), i.e. from anyone who can reach the
server, so three independent layers stand between it and the machine:

1. **Shape.** DuckDB's own parser (``json_serialize_sql``) parses the exact statement that will run. Its tree
   must equal the template's (``SELECT image_id FROM query_images WHERE (...) ORDER BY image_id``) everywhere
   but the condition: a second statement, a UNION, an extra ORDER BY or a comment that swallows the rest is
   refused before anything runs.
2. **Allowlist.** The condition may hold only constants, the catalog's columns, comparisons, AND/OR/NOT,
   IN/BETWEEN/IS NULL/CASE/CAST/COALESCE, LIKE/ILIKE/GLOB/SIMILAR TO, arithmetic and the scalar functions in
   ``ALLOWED_FUNCTIONS``. Subqueries, table functions, parameters, lambdas, ``*``, windows and aggregates are
   refused by name, so ``read_csv``/``read_text``/``read_parquet``/``glob``/``getvariable`` never run.
   Parentheses must balance inside the condition, and regular expressions are bounded in size
   (``indexing.filter_guard``, which also gives every filter a time budget).
3. **Sandbox.** The catalog's connection is locked (``lock_connection``): no file access outside the index's
   own shard folders, no extension install or autoload, no spilling to a temp folder, configuration locked,
   so even a filter that slipped through layers 1-2 could not read a file or load code.

Errors are this module's own sentences. A failed cast in DuckDB echoes the value it could not convert (the
hole that printed a file through ``CAST((SELECT content FROM read_text(...)) AS INTEGER)``), so runtime errors
never carry DuckDB's text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from engine.errors import EngineError
from indexing.filter_guard import DEFAULT_FILTER_BUDGET_S, check_parentheses, check_regex_call, run_with_budget

FILTER_VIEW = "query_images"
FILTER_SQL = "SELECT image_id FROM " + FILTER_VIEW + " WHERE ({where}) ORDER BY image_id"
MAX_WHERE_CHARS = 2000
HIDDEN_COLUMNS = frozenset({"embedding"})  # vectors are searched with k-NN, not filtered with SQL
# Expression classes of DuckDB's serialized parse tree that can only combine or compare what they contain.
SAFE_CLASSES = frozenset({"CONSTANT", "COMPARISON", "CONJUNCTION", "OPERATOR", "BETWEEN", "CASE", "CAST", "TYPE",
                          "COLLATE"})
# Scalar functions and operators a filter may call; everything else (table functions, aggregates, settings,
# variables, file readers) is refused by name.
ALLOWED_FUNCTIONS = frozenset({
    # LIKE, ILIKE, GLOB, SIMILAR TO and their negations as DuckDB spells them
    "~~", "!~~", "~~*", "!~~*", "~~~", "!~~~", "like_escape", "not_like_escape", "ilike_escape", "not_ilike_escape",
    "regexp_matches", "regexp_full_match",
    # arithmetic and concatenation
    "+", "-", "*", "/", "//", "%", "||", "abs", "round", "floor", "ceil", "ceiling", "least", "greatest",
    # text
    "lower", "upper", "lcase", "ucase", "length", "len", "strlen", "trim", "ltrim", "rtrim", "substring", "substr",
    "contains", "starts_with", "^@", "ends_with", "suffix", "prefix", "strpos", "instr", "position", "left",
    "right", "concat", "split_part", "nullif", "ifnull",
    # lists (captions) and list literals
    "list_contains", "list_has", "array_contains", "array_has", "list_has_any", "array_has_any", "list_has_all",
    "array_has_all", "list_value", "array_length", "list_position", "list_extract", "array_extract",
})


def filter_columns(connection: Any, view: str = FILTER_VIEW) -> tuple[str, ...]:
    """The columns a filter may name: those of ``view`` except the embedding vector."""
    rows = connection.execute(f"SELECT * FROM {view} LIMIT 0").description
    return tuple(row[0] for row in rows if row[0].lower() not in HIDDEN_COLUMNS)


def lock_connection(connection: Any, readable_dirs: Iterable[Path]) -> None:
    """Sandbox a DuckDB connection for user SQL: files only under ``readable_dirs``, no extensions, locked."""
    allowed = [str(Path(folder).resolve()) + "/" for folder in readable_dirs]
    connection.execute("SET temp_directory = ''")  # otherwise DuckDB adds ./.tmp to the readable folders
    connection.execute("SET allowed_directories = $dirs", {"dirs": allowed})
    for statement in ("SET enable_external_access = false", "SET autoinstall_known_extensions = false",
                      "SET autoload_known_extensions = false", "SET allow_community_extensions = false",
                      "SET lock_configuration = true"):
        connection.execute(statement)


def filter_sql(connection: Any, where: str, columns: Iterable[str]) -> str:
    """The SQL that runs ``where``, after checking its shape and allowlist (``EngineError`` names the problem)."""
    if not isinstance(where, str) or not where.strip():
        raise EngineError("--where is empty: give an SQL condition such as \"split = 'test'\"")
    if len(where) > MAX_WHERE_CHARS:
        raise EngineError(f"--where is {len(where)} characters long; at most {MAX_WHERE_CHARS} are accepted")
    label = _label(where)
    check_parentheses(where, label)
    sql = FILTER_SQL.format(where=where)
    condition = _parsed_condition(connection, sql, where, label)
    allowed = {name.lower() for name in columns}
    _check_condition(condition, allowed, label, sorted(columns))
    return sql


def run_filter(cursor: Any, where: str, columns: Iterable[str],
               budget_s: float | None = DEFAULT_FILTER_BUDGET_S) -> list[int]:
    """Image ids matching ``where``, ascending; one ``EngineError`` line for any problem, never DuckDB's values.
    The statement is interrupted after ``budget_s`` seconds (``indexing.filter_guard``)."""
    import duckdb

    sql = filter_sql(cursor, where, columns)
    try:
        return run_with_budget(cursor, sql, budget_s, _label(where))
    except (duckdb.BinderException, duckdb.CatalogException) as error:
        raise EngineError(f"{_label(where)}: invalid SQL condition: {_compile_message(error)}") from None
    except duckdb.ConversionException:
        raise EngineError(f"{_label(where)}: a value could not be converted to the type the condition needs; "
                          "compare text columns with quoted text and numbers with numbers") from None
    except duckdb.Error as error:
        raise EngineError(f"{_label(where)}: the condition failed while running ({type(error).__name__}); "
                          "check the functions and values it uses") from None


def _label(where: str) -> str:
    shown = where if len(where) <= 200 else where[:197] + "..."
    return f"--where {shown!r}"


def _compile_message(error: Exception) -> str:
    """First line of a binder/catalog error (these name columns and functions, never stored values)."""
    text = str(error).split("\n", 1)[0].strip()
    return text.split(": ", 1)[1] if ": " in text else text


def _serialize(connection: Any, sql: str) -> dict:
    return json.loads(connection.execute("SELECT json_serialize_sql($sql)", {"sql": sql}).fetchone()[0])


def _without_locations(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _without_locations(value) for key, value in node.items() if not key.startswith("query_location")}
    if isinstance(node, list):
        return [_without_locations(value) for value in node]
    return node


_TEMPLATE: list[dict] = []


def _template(connection: Any) -> dict:
    """The parse tree of the filter statement without its condition (computed once)."""
    if not _TEMPLATE:
        node = _serialize(connection, FILTER_SQL.format(where="TRUE"))["statements"][0]
        node["node"].pop("where_clause")
        _TEMPLATE.append(_without_locations(node))
    return _TEMPLATE[0]


def _parsed_condition(connection: Any, sql: str, where: str, label: str) -> dict:
    try:
        parsed = _serialize(connection, sql)
    except RecursionError:
        raise EngineError(f"{label}: the condition is nested too deeply") from None
    if parsed.get("error"):
        message = " ".join(str(parsed.get("error_message", "syntax error")).split())
        if ";" in where:
            message += " (a single SQL condition is expected, no ';')"
        if "--" in where or "/*" in where:
            message += " (comments are not accepted)"
        raise EngineError(f"{label}: not a valid SQL condition: {message}")
    statements = parsed.get("statements") or []
    if len(statements) != 1:
        raise EngineError(f"{label}: a single SQL condition is expected (no ';')")
    statement = statements[0]
    node = statement.get("node", {})
    condition = node.pop("where_clause", None) if isinstance(node, dict) else None
    if condition is None or _without_locations(statement) != _template(connection):
        raise EngineError(f"{label}: only a condition is accepted (no UNION, ORDER BY, comments or other clauses "
                          "around it)")
    return condition


def _check_condition(condition: dict, allowed: set[str], label: str, columns: list[str]) -> None:
    stack: list[Any] = [condition]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("class")
        if kind == "COLUMN_REF":
            names = node.get("column_names") or []
            name = names[-1] if names else ""
            if len(names) != 1 or name.lower() not in allowed:
                shown = ".".join(names)
                raise EngineError(f"{label}: unknown column {shown!r}; a filter may use {', '.join(columns)}")
        elif kind == "FUNCTION":
            name = str(node.get("function_name", ""))
            if (name.lower() not in ALLOWED_FUNCTIONS or node.get("schema") or node.get("catalog")
                    or node.get("filter") or node.get("distinct") or (node.get("order_bys") or {}).get("orders")):
                raise EngineError(f"{label}: function {name!r} is not allowed in a filter; use comparisons, "
                                  "AND/OR/NOT, IN, BETWEEN, LIKE, IS NULL and simple text/list functions")
            check_regex_call(node, label)
        elif kind == "SUBQUERY":
            raise EngineError(f"{label}: subqueries are not allowed in a filter; compare the catalog's columns "
                              "with values")
        elif kind is not None and kind not in SAFE_CLASSES:
            raise EngineError(f"{label}: {kind.lower().replace('_', ' ')} expressions are not allowed in a filter")
        stack.extend(value for key, value in node.items() if key != "class" and isinstance(value, (dict, list)))
