"""Indexing never stops for one file (every unreadable image is skipped, counted, listed in the summary and in
skipped.jsonl), and one build at a time per index folder (build.lock with pid + host, stale-lock detection)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import indexing_fakes
from engine.cli import main

pytest.importorskip("faiss")
LAUNCH = ("import sys; sys.path.insert(0, {tests!r}); import indexing_fakes; indexing_fakes.install(); "
          "from engine.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(autouse=True)
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import encoders

    loaded: list[str] = []

    def load(spec):
        loaded.append(spec)
        return indexing_fakes.fake_load_model(spec)

    monkeypatch.setattr(encoders, "load_model", load, raising=False)
    return loaded


def build(data: Path, out: Path, *extra: str) -> int:
    return main(["index", str(data), "--out", str(out), "--model", "fake-1", "--workers", "0", "--shard-size", "4",
                 *extra])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def skipped_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]


def test_zero_byte_corrupt_and_missing_images_are_skipped_and_listed(tmp_path: Path, capsys) -> None:
    data = tmp_path / "ds"
    indexing_fakes.write_karpathy(data, 10)
    (data / "images" / "tile_0001.png").write_bytes(b"")  # zero bytes: used to abort the whole build
    (data / "images" / "tile_0004.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (data / "images" / "tile_0006.png").unlink()  # listed in dataset.json, gone from disk
    (data / "images" / "tile_0009.png").write_bytes((data / "images" / "tile_0008.png").read_bytes()[:60])
    out = tmp_path / "index"
    assert build(data, out) == 0
    err = capsys.readouterr().err
    assert "skipped unreadable: 4" in err and str(out / "skipped.jsonl") in err
    for name in ("tile_0001.png", "tile_0004.png", "tile_0006.png", "tile_0009.png"):
        assert name in err
    records = skipped_records(out)
    assert [record["image_id"] for record in records] == [101, 104, 106, 109]
    reasons = {Path(record["path"]).name: record["reason"] for record in records}
    assert "empty (0 bytes)" in reasons["tile_0001.png"] and "not found" in reasons["tile_0006.png"]
    assert "cannot decode" in reasons["tile_0004.png"] and Path(records[0]["path"]).is_absolute()
    assert pq.read_table(out / "shards").num_rows == 6
    assert json.loads((out / "index.json").read_text())["skipped_images"] == 4
    assert not (out / "build.lock").exists()


def test_skipped_list_survives_a_resumed_build(tmp_path: Path, capsys) -> None:
    data = tmp_path / "plain"
    indexing_fakes.write_images(data, 10)
    (data / "img_0001.png").write_bytes(b"")
    (data / "img_0009.png").write_bytes(b"")
    out = tmp_path / "index"
    assert build(data, out) == 0
    for name in ("part-00001.parquet", "part-00002.parquet"):  # as if killed before these shards and index.json
        (out / "shards" / name).unlink()
    (out / "index.json").unlink()
    (out / "skipped.jsonl").unlink()
    capsys.readouterr()
    assert build(data, out) == 0
    assert "reused 1" in capsys.readouterr().err
    assert [Path(record["path"]).name for record in skipped_records(out)] == ["img_0001.png", "img_0009.png"]
    clean = tmp_path / "plain-ok"
    indexing_fakes.write_images(clean, 3)
    assert build(clean, tmp_path / "index-ok") == 0
    assert (tmp_path / "index-ok" / "skipped.jsonl").read_text() == ""  # always written, empty when none


def test_nothing_readable_is_an_error(tmp_path: Path, capsys, fake_encoder) -> None:
    data = tmp_path / "plain"
    indexing_fakes.write_images(data, 3)
    for path in data.iterdir():
        path.write_bytes(b"")
    assert build(data, tmp_path / "index") == 2
    line = error_line(capsys)
    assert "none of the 3 listed images" in line and not fake_encoder  # before the model was loaded
    for path in data.iterdir():
        path.write_bytes(b"not an image")
    assert build(data, tmp_path / "index") == 2
    line = error_line(capsys)
    assert "no image could be read (3 unreadable" in line and "skipped.jsonl" in line
    assert not (tmp_path / "index" / "index.json").exists()


def write_lock(out: Path, pid: int, host: str | None = None) -> None:
    from indexing.lock import _process_start

    out.mkdir(parents=True, exist_ok=True)
    (out / "build.lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                "process_start": _process_start(pid), "started": "earlier",
                                                "command": "engine index elsewhere"}))


def test_a_live_lock_refuses_at_once_and_a_stale_one_is_replaced(tmp_path: Path, capsys, fake_encoder) -> None:
    data = tmp_path / "plain"
    indexing_fakes.write_images(data, 5)
    out = tmp_path / "index"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(out, sleeper.pid)
        began = time.perf_counter()
        assert build(data, out) == 2
        line = error_line(capsys)
        assert "another build is running into this folder" in line and f"pid {sleeper.pid}" in line
        assert time.perf_counter() - began < 5 and not fake_encoder  # refused before loading a model
    finally:
        sleeper.kill()
        sleeper.wait()
    assert build(data, out) == 0  # the owner is gone: the lock is stale
    err = capsys.readouterr().err
    assert "removed a stale build.lock" in err and f"pid {sleeper.pid}" in err
    assert not (out / "build.lock").exists() and (out / "index.json").is_file()
    write_lock(out, 1, host="another-host.example")
    assert build(data, out, "--append") == 2
    line = error_line(capsys)
    assert "another-host.example" in line and "delete" in line


def test_a_refused_build_leaves_no_folder_behind(tmp_path: Path, capsys) -> None:
    data = tmp_path / "plain"
    indexing_fakes.write_images(data, 3)
    out = tmp_path / "new" / "index"
    assert build(data, out, "--batch-size", "0") == 2
    assert build(tmp_path / "missing", out) == 2
    assert "no such file or folder" in error_line(capsys)
    assert not out.exists()


def test_concurrent_append_is_refused_by_the_lock(tmp_path: Path, capsys) -> None:
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    indexing_fakes.write_images(first, 4)
    indexing_fakes.write_images(second, 8, prefix="b")
    indexing_fakes.write_images(third, 4, prefix="c")
    out = tmp_path / "index"
    assert build(first, out) == 0
    capsys.readouterr()
    script = LAUNCH.format(tests=str(Path(__file__).parent))
    command = [sys.executable, "-c", script, "index", str(second), "--out", str(out), "--model", "fake-1:slow",
               "--shard-size", "4", "--batch-size", "2", "--workers", "0", "--append"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (out / "build.lock").exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the first append never took the lock"
            time.sleep(0.02)
        assert build(third, out, "--append") == 2
        line = error_line(capsys)
        assert "another build is running into this folder" in line and f"pid {process.pid}" in line
        assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert pq.read_table(out / "shards").num_rows == 12
    assert build(third, out, "--append") == 0  # once the first append is done, the next one runs
    assert pq.read_table(out / "shards").num_rows == 16
