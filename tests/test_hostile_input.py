"""The ten findings of the hostile-input probe (issue 28), one test each: a malformed header cannot stop the
server, image bombs are refused from their header, a slow filter fails alone, the filter shape check has no
WINDOW gap, framing is strict, multipart and JSON bodies are bounded, CLI mistakes are one line, and control
characters in file names are shown escaped."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from server_fakes import FakeEngine


# ---- a live server over a fake engine ------------------------------------------------------------------------
@pytest.fixture()
def live():
    from engine.query.http_pool import ServerLimits
    from engine.query.server import serve_in_thread

    engine = FakeEngine()
    server, thread = serve_in_thread(engine, limits=ServerLimits(workers=2, idle_timeout_s=2.0,
                                                                 request_timeout_s=2.0))
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes the connection (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


def answers(data: bytes) -> list[tuple[int, dict]]:
    """Every (status, JSON body) in a stream of HTTP answers."""
    found = []
    while data.startswith(b"HTTP/1.1 "):
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        found.append((status, json.loads(rest[:length] or b"{}")))
        data = rest[length:]
    return found


def healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def post(port: int, body: bytes, content_type: str, path: str = "/query") -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


# ---- row 1: a Unicode digit in Content-Length -----------------------------------------------------------------
@pytest.mark.parametrize("digit", [b"\xb2", b"\xb9", b"\xb3", b"1\xb2", b"+5", b" 5 5", b"0x10", b"5, 5"])
def test_row1_non_ascii_content_length_is_400_and_the_server_keeps_serving(live, digit: bytes) -> None:
    got = answers(exchange(live, b"GET /healthz HTTP/1.1\r\nContent-Length: " + digit + b"\r\n\r\n"))
    assert len(got) == 1 and got[0][0] == 400, got
    assert healthy(live)


def test_row1_an_exception_while_framing_ends_one_connection_not_the_server(live, monkeypatch, capsys) -> None:
    import engine.query.http_pool as pool

    def broken(buffer, max_body):
        raise RuntimeError("framing bug")

    monkeypatch.setattr(pool, "frame_head", broken)
    got = answers(exchange(live, b"GET /healthz HTTP/1.1\r\n\r\n"))
    assert got == [(500, {"error": "internal error (RuntimeError)"})]
    monkeypatch.undo()
    assert healthy(live)
    err = capsys.readouterr().err
    assert "internal error while reading the request: RuntimeError: framing bug" in err and "Traceback" not in err


# ---- row 5: line ends and separators standard parsers do not share ---------------------------------------------
@pytest.mark.parametrize("separator", [b"\x85", b"\x0b", b"\x0c", b"\x1c", b"\n", b"\r"])
def test_row5_odd_line_separators_are_refused_not_framed_differently(live, separator: bytes) -> None:
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    payload = (b"POST /query HTTP/1.1\r\nHost: x\r\nX-Note: a" + separator + b"Content-Length: "
               + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
    got = answers(exchange(live, payload))
    assert [status for status, _ in got] == [400], got
    assert healthy(live)


@pytest.mark.parametrize("head", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded: value\r\n\r\n",  # obs-fold
    b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",  # space before the colon
    b"POST /query HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",  # two, even if equal
    b"POST /query HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
    b"GET /healthz HTTP/1.1\nHost: x\n\n",  # bare LF line ends
])
def test_row5_other_ambiguous_heads_are_400(live, head: bytes) -> None:
    got = answers(exchange(live, head))
    assert [status for status, _ in got] == [400], got
    assert healthy(live)


# ---- row 6: a multipart body of many tiny parts ---------------------------------------------------------------
def test_row6_multipart_parts_are_bounded_before_parsing(live) -> None:
    boundary = "xyz"
    tiny = b"".join(b"--xyz\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\na\r\n" % n for n in range(5000))
    body = tiny + b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc\r\n--xyz--\r\n"
    began = time.perf_counter()
    status, payload = post(live, body, f"multipart/form-data; boundary={boundary}")
    assert status == 413 and "5001 parts" in payload["error"] and time.perf_counter() - began < 2
    assert healthy(live)


# ---- row 8: JSON a strict parser refuses ------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b'{"q":"river","k":Infinity}', b'{"q":"river","k":NaN}', b'{"q":"river","k":1e400}',
                                  b'{"q":"river","k":' + b"9" * 5000 + b"}", b"[" * 100000,
                                  b'{"q":"\\udcff"}', b'{"q":"river","k":true}', b'{"q":"river","k":2.5}'])
def test_row8_json_errors_are_400_with_one_line(live, body: bytes) -> None:
    status, payload = post(live, body, "application/json")
    assert status == 400 and "\n" not in payload["error"] and "internal" not in payload["error"], payload
    assert healthy(live)


# ---- rows 2 and 3: image bombs --------------------------------------------------------------------------------
def tiled_tiff_bomb(path: Path, side: int = 14000, tile: int = 512) -> Path:
    """A few-KB zlib-tiled uint16 TIFF declaring side x side pixels: every tile offset points at one small
    compressed tile of zeros (what a 405 KB bomb decodes to, without writing 392 MB here)."""
    import struct
    import zlib

    data = zlib.compress(bytes(tile * tile * 2), 9)
    count = ((side + tile - 1) // tile) ** 2
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 16), (259, 3, 1, 8), (262, 3, 1, 1),
               (277, 3, 1, 1), (284, 3, 1, 1), (322, 3, 1, tile), (323, 3, 1, tile), (324, 4, count, None),
               (325, 4, count, None), (339, 3, 1, 1)]
    ifd_at = 8
    ifd_size = 2 + 12 * len(entries) + 4
    offsets_at = ifd_at + ifd_size
    counts_at = offsets_at + 4 * count
    data_at = counts_at + 4 * count
    ifd = struct.pack("<H", len(entries))
    for tag, kind, number, value in entries:
        if tag == 324:
            value = offsets_at
        elif tag == 325:
            value = counts_at
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, number) + packed
    ifd += struct.pack("<I", 0)
    blob = (b"II*\x00" + struct.pack("<I", ifd_at) + ifd + struct.pack(f"<{count}I", *([data_at] * count))
            + struct.pack(f"<{count}I", *([len(data)] * count)) + data)
    path.write_bytes(blob)
    return path


def strip_png(path: Path, width: int = 100000, height: int = 5) -> Path:
    from PIL import Image

    Image.new("L", (width, height)).save(path, optimize=True)
    return path


@pytest.fixture()
def default_limits(monkeypatch):
    """The image limits back to their defaults, and back to what they were after the test."""
    import importlib

    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.delenv("ENGINE_MAX_IMAGE_PIXELS", raising=False)
    try:
        guard = importlib.import_module("engine.data.image_guard")
    except ImportError:  # code without the guard: the tests then show what it does without one
        return None
    monkeypatch.setattr(guard, "_configured", None)
    return guard


PEAK_SCRIPT = """
import json, resource, sys
from engine.data.images import load_rgb
from engine.errors import DataError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    image = load_rgb(sys.argv[1])
    from engine.query.engine import QueryEngine  # noqa: F401 -- what a query does next: resize for the model
    image.resize((224, max(1, 224 * image.height // image.width)) if image.width < image.height
                 else (max(1, 224 * image.width // image.height), 224))
    message = None
except DataError as error:
    message = str(error)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"message": message, "peak_kb": after - before}))
"""


def peak_of_loading(path: Path) -> dict:
    import os
    import subprocess

    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    environment.pop("ENGINE_MAX_IMAGE_PIXELS", None)
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=120, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("make", [tiled_tiff_bomb, strip_png], ids=["row2-tiff-14000x14000", "row3-png-100000x5"])
def test_rows_2_3_image_bombs_are_refused_from_the_header_with_small_peak_memory(tmp_path: Path, make) -> None:
    bomb = make(tmp_path / ("bomb.tif" if make is tiled_tiff_bomb else "strip.png"))
    assert bomb.stat().st_size < 50_000
    result = peak_of_loading(bomb)
    assert result["message"] and "refused before decoding" in result["message"], result
    assert result["peak_kb"] < 64 * 1024, result  # nothing decoded: well under 64 MB over the interpreter


def test_rows_2_3_every_path_refuses_bombs_with_one_line(tmp_path: Path, default_limits, capsys, live_upload) -> None:
    from engine.cli import main
    from engine.data.images import probe_image

    tiff = tiled_tiff_bomb(tmp_path / "bomb.tif")
    png = strip_png(tmp_path / "strip.png")
    for bomb in (tiff, png):
        assert not probe_image(bomb).ok and "refused before decoding" in probe_image(bomb).problem
        capsys.readouterr()
        code = main(["query", "--image", str(bomb), "--index", str(tmp_path / "no-index")])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip() and " 127.0.0.1 " not in line]  # access log
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
        assert "refused before decoding" in lines[0] and "Traceback" not in err
        status, payload = post(live_upload, bomb.read_bytes(), "image/png")
        assert status == 413 and "refused before decoding" in payload["error"], payload
    assert healthy(live_upload)


def test_rows_2_3_max_image_pixels_is_configurable(tmp_path: Path, default_limits, capsys) -> None:
    from PIL import Image

    from engine.data.images import load_rgb
    from engine.errors import DataError

    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    assert load_rgb(small).size == (40, 30)
    default_limits.configure(1000)
    with pytest.raises(default_limits.ImageTooLarge, match=r"1,200 pixels, over the limit of 1,000"):
        load_rgb(small)
    assert default_limits.limits().max_pixels == 1000
    with pytest.raises(DataError, match="positive"):
        default_limits.configure(0)


@pytest.fixture()
def live_upload():
    """A server whose fake engine decodes uploads the way QueryEngine does (image bytes → load_rgb)."""
    from engine.query.engine import QueryEngine
    from engine.query.http_pool import ServerLimits
    from engine.query.server import serve_in_thread

    class DecodingEngine(FakeEngine):
        def search(self, request):
            if request.is_image:
                QueryEngine.load_query_image(self, request)
            return super().search(request)

    server, thread = serve_in_thread(DecodingEngine(), limits=ServerLimits(workers=2))
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


# ---- rows 4 and 7: filters with a time budget, and no clause after the condition -------------------------------
PATHOLOGICAL = "regexp_matches(captions::VARCHAR, '([^x]{1,100}[^y]{1,100}){1,9}q')"
WINDOW_GAP = "1=1) WINDOW w AS (ORDER BY getenv('HOME')"


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("faiss")
    from query_fixtures import build_query_index

    from engine.query.engine import QueryEngine
    from engine.query.server import serve_in_thread

    index_dir, _, _ = build_query_index(tmp_path_factory.getbasetemp() / "query-index")
    engine = QueryEngine(index_dir, device="cpu")
    server, thread = serve_in_thread(engine)
    yield server.server_address[1], index_dir, engine
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    engine.close()


@pytest.fixture(scope="module")
def batched_server(real_server):
    """The same index served with batched encoding (``engine serve --batch on``)."""
    from engine.query.batching import BatchPolicy
    from engine.query.engine import QueryEngine
    from engine.query.server import serve_in_thread

    engine = QueryEngine(real_server[1], device="cpu", batch=BatchPolicy())
    server, thread = serve_in_thread(engine)
    yield server.server_address[1], real_server[1], engine
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    engine.close()


SERVERS = pytest.mark.parametrize("server", ["real_server", "batched_server"])


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, dict, float]:
    began = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), time.perf_counter() - began
    finally:
        connection.close()


@SERVERS
def test_row4_a_pathological_regex_fails_alone_and_fast(server, request) -> None:
    import threading
    from urllib.parse import quote

    port = request.getfixturevalue(server)[0]
    outcome: dict = {}
    slow_path = f"/query?q=river&where={quote(PATHOLOGICAL)}"
    slow = threading.Thread(target=lambda: outcome.update(slow=get(port, slow_path)))
    slow.start()
    time.sleep(0.05)
    status, payload, elapsed = get(port, "/query?q=farm&k=2&where=" + quote("split = 'test'"))
    slow.join(timeout=60)
    assert status == 200 and len(payload["results"]) == 2 and elapsed < 2.0, (status, payload, elapsed)
    status, payload, elapsed = outcome["slow"]
    assert status == 400 and "too complex" in payload["error"] and elapsed < 2.0, outcome


def test_row4_the_watchdog_interrupts_a_slow_filter_and_others_still_run() -> None:
    """A filter slow over many rows (no regex at all) stops at its budget; a second cursor is not held up."""
    import threading

    import duckdb

    from indexing.filter_guard import FilterTimeout
    from indexing.sql_filter import run_filter

    connection = duckdb.connect()
    connection.execute("CREATE VIEW query_images AS SELECT range AS image_id, 'tile ' || range::VARCHAR AS label "
                       "FROM range(1000000000)")
    columns = ["image_id", "label"]
    other: dict = {}

    def quick() -> None:
        began = time.perf_counter()
        cursor = connection.cursor()  # the same database, its own cursor: not held by the slow one
        other["ids"] = [row[0] for row in cursor.execute("SELECT image_id FROM query_images LIMIT 2").fetchall()]
        other["elapsed"] = time.perf_counter() - began

    began = time.perf_counter()
    runner = threading.Timer(0.1, quick)
    runner.start()
    with pytest.raises(FilterTimeout, match=r"ran longer than its 0\.5 s budget"):
        run_filter(connection.cursor(), "label LIKE '%zz%'", columns, budget_s=0.5)
    stopped = time.perf_counter() - began
    runner.join(timeout=30)
    assert stopped < 2.0, stopped
    assert other["ids"] == [0, 1] and other["elapsed"] < 1.0, other


def test_row4_filter_timeout_flag_is_checked(capsys) -> None:
    from engine.cli import main

    code = main(["query", "river", "--filter-timeout", "-1", "--index", "no-such-index"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--filter-timeout" in err


class _Opened(Exception):
    """Raised by a stand-in QueryEngine once it has seen its options."""


@pytest.mark.parametrize("argv, wanted", [
    (["query", "river", "--filter-timeout", "0.5"], {"filter_budget_s": 0.5}),
    (["serve", "--port", "0", "--filter-timeout", "0.25", "--batch", "on"], {"filter_budget_s": 0.25}),
    (["serve", "--port", "0", "--filter-timeout", "0", "--batch", "off"], {"filter_budget_s": 0.0, "batch": None}),
])
def test_row4_filter_timeout_reaches_the_engine_through_the_shared_opener(real_server, monkeypatch, capsys,
                                                                          argv, wanted) -> None:
    """``engine query`` and ``engine serve`` open their engine through ``engine.query.api.open_engine``; the
    budget (and serve's batch policy) must reach QueryEngine through it."""
    import engine.query.engine as engine_module
    from engine.cli import main

    seen: dict = {}

    def stand_in(folder, **options):
        seen.update(options)
        raise _Opened()

    monkeypatch.setattr(engine_module, "QueryEngine", stand_in)
    with pytest.raises(_Opened):
        main([*argv, "--index", str(real_server[1])])
    assert {name: seen.get(name, "missing") for name in wanted} == wanted, seen
    if argv[0] == "serve" and "on" in argv:
        assert seen["batch"] is not None


def test_row4_engine_open_forwards_filter_timeout(real_server) -> None:
    import engine
    from engine.errors import EngineError

    with engine.open(real_server[1], device="cpu", filter_timeout=0.5) as opened:
        assert opened._engine.store.filter_budget_s == 0.5
        assert opened.search("river", k=2, where="split = 'test'").num_rows == 2
    with pytest.raises(EngineError, match="filter_timeout must be"):
        engine.open(real_server[1], filter_timeout=-1)


def test_rows_2_3_api_images_in_memory_pass_the_image_guard(real_server, default_limits) -> None:
    """``Index.search``/``embed_images`` with a PIL image or an array: refused (one line) before the model's
    resize makes a 5-pixel-high strip thousands of times larger."""
    import numpy as np
    from PIL import Image

    import engine
    from engine.errors import DataError

    with engine.open(real_server[1], device="cpu") as opened:
        for image in (Image.new("RGB", (4000, 5)), np.zeros((5, 4000, 3), np.uint8)):
            with pytest.raises(DataError, match="aspect ratio of 800:1") as caught:
                opened.search(image=image, k=1)
            assert caught.value.http_status == 413 and "\n" not in str(caught.value)
        with pytest.raises(DataError, match="aspect ratio"):
            opened.embed_images([Image.new("L", (5, 4000))])
        assert opened.search(image=Image.new("RGB", (64, 48)), k=1).num_rows == 1


def test_row7_window_clause_after_the_condition_is_refused(real_server, capsys) -> None:
    from urllib.parse import quote

    from engine.cli import main

    port, index_dir, engine = real_server
    status, payload, _ = get(port, "/query?q=river&where=" + quote(WINDOW_GAP))
    assert status == 400 and "closes more than the condition opened" in payload["error"], payload
    capsys.readouterr()
    code = main(["query", "river", "--index", str(index_dir), "--where", WINDOW_GAP])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and " 127.0.0.1 " not in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "HOME" not in lines[0].split("'")[0]
    # a balanced condition with parentheses and a ')' inside a string still works
    assert engine.store.filter_ids("(split = 'test' OR label = 'a)b') AND (image_id >= 0)").size > 0


# ---- row 9: CLI mistakes are one line, and nothing is half-written ---------------------------------------------
def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and " 127.0.0.1 " not in line
             and not line.startswith(("note:", "encoding", "index "))]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    return lines[0]


def test_row9_non_utf8_query_text_is_one_line(real_server, capsys) -> None:
    from engine.cli import main

    capsys.readouterr()
    code = main(["query", "r\udcffiver", "--index", str(real_server[1])])  # what Python makes of argv b"r\xffiver"
    assert code == 2 and "not valid UTF-8" in one_error_line(capsys.readouterr().err)


def test_row9_a_faiss_factory_that_cannot_train_fails_before_anything_is_written(real_server, tmp_path: Path,
                                                                                 capsys) -> None:
    from engine.cli import main

    data_dir = real_server[1].parent / "data"
    model_dir = real_server[1].parent / "model"
    out = tmp_path / "new-index"
    capsys.readouterr()
    began = time.perf_counter()
    code = main(["index", str(data_dir), "--out", str(out), "--model", str(model_dir), "--index", "IVF99999999,PQ1"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "99999999 IVF lists" in line and time.perf_counter() - began < 5  # no list is allocated
    assert not out.exists()


def test_row9_indexing_a_folder_full_of_special_files_is_one_line(tmp_path: Path, capsys) -> None:
    from engine.cli import main

    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    out = tmp_path / "proc-index"
    code = main(["index", "/proc", "--out", str(out)])
    line = one_error_line(capsys.readouterr().err)
    assert code != 0 and "/proc" in line and not out.exists()


def test_row9_an_unlistable_entry_is_not_an_image(tmp_path: Path, monkeypatch) -> None:
    """What /proc/1/cwd does as a non-root user: examining the entry raises PermissionError."""
    from engine.data.common import is_folder, is_image_file, list_image_files

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    (tmp_path / "a.png").write_bytes(b"x")
    monkeypatch.setattr(Path, "stat", refuse)
    assert not is_image_file(tmp_path / "a.png") and not is_folder(tmp_path)
    monkeypatch.setattr(Path, "iterdir", refuse)
    assert list_image_files(tmp_path) == []


# ---- row 10: control characters in file names ---------------------------------------------------------------
def hostile_result():
    from engine.query.request import Hit, QueryResult

    result = QueryResult(query="river", target="images", k=2, where=None, rerank="none")
    result.hits = [Hit(1, 0.9, 0.9, 7, "/data/evil\x1b[2J\x1b]0;pwned\x07.png", "test", "farm\x1b[31m",
                       ["a\nb [red]x[/]"]),
                   Hit(2, 0.8, 0.8, 8, "/data/two\nlines.png", "test", "farm", ["c"])]
    return result


def test_row10_control_characters_are_escaped_in_the_table(capsys) -> None:
    from engine.query.output import print_table

    print_table(hostile_result())
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    assert "\\x1b[2J" in out.replace("\n", "").replace("│", "").replace(" ", "")
    rows = [line for line in out.splitlines() if line.lstrip().startswith("│") and line.strip("│ ")]
    assert sum(1 for line in rows if line.strip("│ ").split("│")[0].strip() in ("1", "2")) == 2, out
    assert "[red]" in out  # shown, not taken as markup


def test_row10_control_characters_are_escaped_in_the_gallery() -> None:
    from engine.query.gallery import render_gallery

    page = render_gallery(hostile_result())
    assert "\x1b" not in page and "\x07" not in page and "/data/two\nlines" not in page
    assert "evil\\x1b[2J" in page and "two\\nlines" in page


def test_row3_a_strip_within_the_side_limit_is_refused_by_its_aspect_ratio(tmp_path: Path, default_limits) -> None:
    from engine.data.images import load_rgb
    from engine.errors import DataError

    strip = strip_png(tmp_path / "strip.png", width=30000, height=5)  # 150,000 pixels, a side under 32,768
    with pytest.raises(DataError, match=r"aspect ratio of 6000:1.*refused|refused.*aspect ratio of 6000:1"):
        load_rgb(strip)


@SERVERS
def test_row4_a_slow_filter_does_not_hold_other_searches(server, request, monkeypatch) -> None:
    """The filter runs on the request's own thread, not the model thread every search shares, and before its
    query joins an encoding batch: while one filter takes 2 s, a query without a filter still answers at once,
    and the filter's time is reported (``timings_ms.filter``)."""
    import threading
    from urllib.parse import quote

    port, _, engine = request.getfixturevalue(server)
    original = engine.store.filter_ids

    def slow_filter(where: str):
        time.sleep(2.0)
        return original(where)

    monkeypatch.setattr(engine.store, "filter_ids", slow_filter)
    get(port, "/query?q=warm&k=1")
    outcome: dict = {}
    slow = threading.Thread(target=lambda: outcome.update(slow=get(port, "/query?q=river&where="
                                                                        + quote("split = 'test'"))))
    slow.start()
    time.sleep(0.3)
    status, payload, elapsed = get(port, "/query?q=farm&k=2")
    slow.join(timeout=30)
    assert status == 200 and len(payload["results"]) == 2 and elapsed < 1.0, (status, elapsed)
    assert "filter" not in payload["timings_ms"], payload["timings_ms"]
    status, payload, _ = outcome["slow"]
    assert status == 200 and payload["timings_ms"]["filter"] >= 1900, payload["timings_ms"]
    assert payload["timings_ms"]["total"] >= payload["timings_ms"]["filter"], payload["timings_ms"]


def test_a_low_pixel_limit_never_breaks_crops_of_decoded_images() -> None:
    """--max-image-pixels refuses files by their header; PIL's own bomb check (which also runs on crops and
    resizes of decoded images, e.g. the model's 224 px centre crop) is never lowered below its default."""
    from PIL import Image

    from engine.data import image_guard

    image_guard.configure(100)
    assert image_guard.limits().max_pixels == 100
    Image.new("RGB", (300, 300)).crop((0, 0, 224, 224)).load()  # DecompressionBombError if PIL's limit followed
