"""A real ``kill -9`` of a running ``engine index`` process, then the same command again: same ids, same rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import indexing_fakes

pytest.importorskip("faiss")

IMAGES = 48
SHARD_SIZE = 4
SHARDS = IMAGES // SHARD_SIZE
LAUNCH = ("import sys; sys.path.insert(0, {tests!r}); import indexing_fakes; indexing_fakes.install(); "
          "from engine.cli import main; sys.exit(main(sys.argv[1:]))")
FIRST_SHARD_TIMEOUT_S = 120


def _command(data: Path, out: Path, model: str) -> list[str]:
    script = LAUNCH.format(tests=str(Path(__file__).parent))
    return [sys.executable, "-c", script, "index", str(data), "--out", str(out), "--model", model,
            "--shard-size", str(SHARD_SIZE), "--batch-size", "2", "--workers", "1"]


def _contents(out: Path) -> tuple[list[int], list[str], np.ndarray, int]:
    table = pq.read_table(out / "shards")
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    return table.column("image_id").to_pylist(), table.column("path").to_pylist(), vectors, \
        pq.read_table(out / "text_shards").num_rows


def test_kill_9_then_rerun_matches_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "ds"
    indexing_fakes.write_karpathy(data, IMAGES, captions_per_image=1)
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(_command(data, killed_out, "fake-3:slow"), env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + FIRST_SHARD_TIMEOUT_S
        while not (killed_out / "shards" / "part-00000.parquet").exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard appeared in time"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the DataLoader worker of the killed run, if still there
        except ProcessLookupError:
            pass
    assert process.returncode == -signal.SIGKILL
    done_at_kill = len(list((killed_out / "shards").glob("part-*.parquet")))
    assert 1 <= done_at_kill < SHARDS, "the run must be interrupted mid-way for this test to mean anything"
    assert not (killed_out / "index.json").exists()

    rerun = subprocess.run(_command(data, killed_out, "fake-3:slow"), env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert f"reused {done_at_kill}" in rerun.stderr.decode()
    import encoders
    from engine.cli import main

    monkeypatch.setattr(encoders, "load_model", indexing_fakes.fake_load_model, raising=False)
    assert main(_command(data, clean_out, "fake-3")[3:]) == 0  # the uninterrupted run, in-process (faster)

    killed_ids, killed_paths, killed_vectors, killed_texts = _contents(killed_out)
    clean_ids, clean_paths, clean_vectors, clean_texts = _contents(clean_out)
    assert killed_ids == clean_ids == list(range(100, 100 + IMAGES))
    assert killed_paths == clean_paths and killed_texts == clean_texts == IMAGES
    np.testing.assert_array_equal(killed_vectors, clean_vectors)
    assert sorted(p.name for p in (killed_out / "shards").iterdir()) == \
        sorted(p.name for p in (clean_out / "shards").iterdir())
    assert not [p for p in killed_out.rglob("*.tmp")]
