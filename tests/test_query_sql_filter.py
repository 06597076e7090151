"""``--where`` is data, not code: every attack that once read files through DuckDB is refused with one line, in
the CLI and over HTTP, and nothing of the file ever appears; ordinary filters keep working."""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from engine.cli import main
from engine.errors import EngineError
from query_fixtures import build_query_index

pytest.importorskip("faiss")
MARKER = "S3CRET-MARKER-7F3A"
ENV_MARKER = "ENVSECRET-9B1C"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return build_query_index(tmp_path_factory.getbasetemp() / "query-index")


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import duckdb

    folder = tmp_path_factory.mktemp("secrets")
    text = folder / "passwd"
    text.write_text(f"root:x:0:0:{MARKER}:/root:/bin/bash\n")
    csv = folder / "secret.csv"
    csv.write_text(f"name,value\nkey,{MARKER}\n")
    parquet = folder / "secret.parquet"
    connection = duckdb.connect()
    connection.execute(f"COPY (SELECT '{MARKER}' AS value) TO '{parquet}' (FORMAT parquet)")
    connection.close()
    return {"dir": folder, "text": text, "csv": csv, "parquet": parquet, "copy_target": folder / "copied.csv",
            "attach_target": folder / "attached.db"}


def attacks(paths: dict[str, Path]) -> list[str]:
    """The issue's attacks and their relatives: file readers, globbing, writes, attach, pragmas, env, casts."""
    return [
        f"split = 'test' OR (SELECT count(*) FROM read_csv('{paths['csv']}')) > 0",
        f"CAST((SELECT content FROM read_text('{paths['text']}')) AS INTEGER) = 1",
        f"CAST((SELECT value FROM read_parquet('{paths['parquet']}')) AS INTEGER) = 1",
        f"EXISTS (SELECT * FROM glob('{paths['dir']}/*'))",
        f"split IN (SELECT column1 FROM read_csv('{paths['csv']}', header = false))",
        f"1=1) UNION SELECT 1 FROM read_text('{paths['text']}') WHERE (1=1",
        f"split = 'test'; COPY (SELECT 1) TO '{paths['copy_target']}'",
        f"split = 'test'; ATTACH '{paths['attach_target']}' AS other",
        "split = 'test'; PRAGMA enable_external_access",
        "(SELECT count(*) FROM pragma_version()) > 0",
        "getenv('RS_ENGINE_TEST_SECRET') IS NOT NULL",
        "getvariable('x') IS NULL",
        "current_setting('enable_external_access') = 'true'",
        f"CAST(read_blob('{paths['text']}') AS INTEGER) = 1",
        "CAST(path AS INTEGER) = 1",  # the catalog's own values must not be echoed either
        "split = 'test' -- ",
        "count(*) > 0",
    ]


def no_leak(text: str, built) -> None:
    assert MARKER not in text and ENV_MARKER not in text
    assert "tile_0" not in text  # no stored path is echoed (CAST(path AS INTEGER))


def one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --where"), err
    assert "Traceback" not in err
    return lines[0]


def test_every_attack_is_refused_in_the_cli(built, secrets, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RS_ENGINE_TEST_SECRET", ENV_MARKER)
    for where in attacks(secrets):
        code = main(["query", "tile", "--index", str(built[0]), "--where", where, "--json"])
        captured = capsys.readouterr()
        one_error_line(code, captured.err)
        assert captured.out == ""
        no_leak(captured.out + captured.err, built)
    assert not secrets["copy_target"].exists() and not secrets["attach_target"].exists()


@pytest.fixture(scope="module")
def server(built):
    from engine.query.engine import QueryEngine
    from engine.query.server import serve_in_thread

    engine = QueryEngine(built[0], device="cpu")
    running, thread = serve_in_thread(engine)
    yield running.server_address[1]
    running.shutdown()
    running.server_close()
    thread.join(timeout=10)
    engine.close()


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        connection.close()


def test_every_attack_is_refused_over_http(server, secrets, capsys, monkeypatch, built) -> None:
    monkeypatch.setenv("RS_ENGINE_TEST_SECRET", ENV_MARKER)
    for where in attacks(secrets):
        status, body = get(server, f"/query?q=tile&where={quote(where)}")
        assert status == 400, (where, body)
        error = json.loads(body)["error"]
        assert error.startswith("--where") and "\n" not in error
        no_leak(body, built)
        status, page = get(server, f"/?q=tile&where={quote(where)}")  # the gallery route shares the check
        assert status == 400
        no_leak(page, built)
    no_leak(capsys.readouterr().err, built)  # nor in the server's log
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=60)
    connection.request("POST", "/query", body=json.dumps({"q": "tile", "where": 5}),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 400 and "where must be a string" in json.loads(response.read())["error"]
    connection.close()
    assert not secrets["copy_target"].exists() and not secrets["attach_target"].exists()


def test_ordinary_filters_still_work(built, server) -> None:
    from indexing.catalog import Catalog

    catalog = Catalog(built[0])
    try:
        assert catalog.filter_ids("class = 'river' AND split IN ('test', 'val')").tolist() == [102, 106, 110, 114]
        assert catalog.filter_ids("path LIKE '%tile_00%' AND NOT label = 'farm'").tolist() == [100, 102, 104, 106,
                                                                                              108]
        assert catalog.filter_ids("list_contains(captions, 'a farm tile number 3 view 1')").tolist() == [103]
        assert catalog.filter_ids("width BETWEEN 60 AND 70 AND lower(split) = 'train' AND label IS NOT NULL"
                                  ).tolist() == [100, 103, 104, 107, 108, 111, 112, 115]
        assert catalog.filter_ids("\"class\" ILIKE 'RIV%' AND image_id % 4 = 0").tolist() == [100, 104, 108, 112]
        with pytest.raises(EngineError, match="unknown column 'embedding'"):
            catalog.filter_ids("embedding IS NULL")
    finally:
        catalog.close()
    status, body = get(server, "/query?q=tile&k=3&where=" + quote("split = 'a;b' OR class = 'farm'"))
    assert status == 200 and {hit["label"] for hit in json.loads(body)["results"]} == {"farm"}


def test_the_catalog_connection_is_sandboxed(built, secrets) -> None:
    """Defence in depth: even SQL that bypassed the checks could read no file outside the index, nor unlock."""
    import duckdb

    from indexing.catalog import Catalog

    catalog = Catalog(built[0])
    try:
        for sql in (f"SELECT * FROM read_text('{secrets['text']}')", f"SELECT * FROM read_csv('{secrets['csv']}')",
                    f"SELECT * FROM glob('{secrets['dir']}/*')",
                    f"COPY (SELECT 1) TO '{secrets['copy_target']}'", f"ATTACH '{secrets['attach_target']}'",
                    "SET enable_external_access = true", "SET lock_configuration = false", "LOAD httpfs",
                    "SET allowed_directories = ['/']"):
            with pytest.raises(duckdb.Error) as caught:
                catalog.connection.execute(sql).fetchall()
            assert MARKER not in str(caught.value)
        assert catalog.connection.execute("SELECT count(*) FROM images").fetchone()[0] == 16
        assert catalog.stats().images == 16
    finally:
        catalog.close()
