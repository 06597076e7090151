"""Fail fast and say what happened: bad paths and flags answer before any model loads, a query names the index
it used, the "last index" belongs to the project folder, interrupted builds are named as such, an --append
that adds nothing says so (and no renumbering note), and a dataset.json with a UTF-8 BOM is read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import indexing_fakes
from engine.cli import main
from query_fixtures import build_query_index

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return build_query_index(tmp_path_factory.getbasetemp() / "query-index")


@pytest.fixture()
def no_model(monkeypatch) -> list[str]:
    """Record every model load (and fail the query engine's): the checks must come first."""
    import encoders
    import engine.query.engine as engine_module

    loads: list[str] = []

    def refuse_engine(*args, **kwargs):
        loads.append("QueryEngine")
        raise AssertionError("the model was loaded before the bad input was reported")

    def record(spec=None):
        loads.append(str(spec))
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(engine_module.QueryEngine, "__init__", refuse_engine)
    monkeypatch.setattr(encoders, "load_model", record, raising=False)
    return loads


def one_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def test_query_checks_paths_and_flags_before_the_model(built, capsys, tmp_path: Path, no_model) -> None:
    index = str(built[0])
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    interrupted = tmp_path / "interrupted"
    shutil.copytree(built[0], interrupted)
    (interrupted / "index.json").unlink()
    cases = [
        (["--image", str(tmp_path / "missing.png")], "missing.png"),
        (["--image", str(not_image)], "cannot decode"),
        (["--image", str(empty)], "empty (0 bytes)"),
        (["tile", "--html", str(a_file / "gallery.html")], "--html"),
        (["tile", "--html", str(tmp_path)], "is a folder"),
        (["tile", "--checkpoint", str(tmp_path / "no-model")], "--checkpoint"),
        (["tile", "--model", str(tmp_path / "no-model")], "--model"),
        (["tile", "--device", "gpu"], "--device"),
        (["tile", "--index", str(tmp_path / "nowhere")], "index folder not found"),
        (["tile", "--index", str(interrupted)], "interrupted build: rerun the same command to finish"),
        (["tile", "--index", str(a_file)], "not a folder"),
    ]
    for argv, fragment in cases:
        if "--index" not in argv:
            argv = [*argv, "--index", index]
        began = time.perf_counter()
        line = one_error(capsys, main(["query", *argv]))
        assert fragment in line and time.perf_counter() - began < 5, (argv, line)
    assert no_model == []
    assert str(built[2]) in one_error(capsys, main(["serve", "--index", str(interrupted), "--port", "0"]))


def test_index_and_eval_check_paths_before_the_model(built, capsys, tmp_path: Path, no_model) -> None:
    data = built[2]
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    out = str(tmp_path / "idx")
    cases = [
        (["index", str(data), "--out", out, "--masks", str(tmp_path / "no-masks"), "--mask", "hard"], "--masks"),
        (["index", str(data), "--out", out, "--model", str(tmp_path / "no-model")], "--model"),
        (["index", str(data), "--out", str(a_file / "idx")], "is not a folder"),
        (["index", str(tmp_path / "no-data"), "--out", out], "no such file or folder"),
        (["eval", str(data), "--out", str(a_file / "result.json")], "--out"),
        (["eval", str(data), "--checkpoint", str(tmp_path / "no-model")], "--checkpoint"),  # the hidden old name
        (["eval", str(data), "--model", str(tmp_path / "no-model")], "--model"),
        (["eval", str(data), "--model", "a", "--checkpoint", "b"], "different models"),
        (["eval", str(data), "--index", str(tmp_path / "no-index")], "index folder not found"),
    ]
    for argv, fragment in cases:
        line = one_error(capsys, main(argv))
        assert fragment in line, (argv, line)
    assert no_model == [] and not Path(out).exists()


def test_last_index_is_per_project_and_the_query_says_which(built, capsys, tmp_path: Path, monkeypatch) -> None:
    from indexing.last_index import last_index, record_last_index

    monkeypatch.delenv("ENGINE_PROJECT", raising=False)
    monkeypatch.delenv("ENGINE_INDEX", raising=False)
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "home"))
    project_a, project_b = tmp_path / "a", tmp_path / "b"
    for project in (project_a, project_b):
        (project / ".git").mkdir(parents=True)
    (project_a / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(project_a)
    record_last_index(built[0])
    assert (project_a / ".rs-engine" / "last_index").is_file()
    monkeypatch.chdir(project_a / "src" / "deep")  # anywhere inside the project
    assert last_index() == built[0].resolve()
    monkeypatch.chdir(project_b)  # another project does not see it
    assert last_index() is None
    monkeypatch.chdir(project_a)
    code = main(["query", "tile", "-k", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and len(json.loads(captured.out)["results"]) == 1
    assert f"using index {built[0].resolve()}" in captured.err and ".rs-engine/last_index" in captured.err
    monkeypatch.setenv("ENGINE_INDEX", str(built[0]))
    assert main(["query", "tile", "-k", "1"]) == 0
    assert "(from $ENGINE_INDEX)" in capsys.readouterr().err
    assert main(["query", "tile", "-k", "1", "--index", str(built[0])]) == 0
    assert "using index" not in capsys.readouterr().err  # said only when the user did not choose


def test_an_index_build_records_itself_in_its_project(tmp_path: Path, monkeypatch, capsys) -> None:
    import encoders

    monkeypatch.setattr(encoders, "load_model", indexing_fakes.fake_load_model, raising=False)
    monkeypatch.delenv("ENGINE_PROJECT", raising=False)
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    monkeypatch.chdir(project)
    indexing_fakes.write_images(tmp_path / "plain", 3)
    assert main(["index", str(tmp_path / "plain"), "--out", "idx", "--model", "fake-1", "--workers", "0"]) == 0
    assert (project / ".rs-engine" / "last_index").read_text().strip() == str((project / "idx").resolve())


def test_interrupted_and_running_builds_are_named(built, tmp_path: Path) -> None:
    from engine.errors import ConfigError
    from indexing.loader import load_index

    folder = tmp_path / "partial"
    shutil.copytree(built[0], folder)
    (folder / "index.json").unlink()
    with pytest.raises(ConfigError, match="interrupted build: rerun the same command to finish"):
        load_index(folder)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        from indexing.lock import _process_start

        (folder / "build.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                       "process_start": _process_start(sleeper.pid)}))
        with pytest.raises(ConfigError, match="a build is still running into this folder"):
            load_index(folder)
    finally:
        sleeper.kill()
        sleeper.wait()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="not an index folder"):
        load_index(empty)


def test_append_that_adds_nothing_says_so_without_renumbering_note(tmp_path: Path, capsys, monkeypatch) -> None:
    import encoders

    monkeypatch.setattr(encoders, "load_model", indexing_fakes.fake_load_model, raising=False)
    folder = tmp_path / "plain"
    indexing_fakes.write_images(folder, 4)
    out = tmp_path / "index"
    argv = ["index", str(folder), "--out", str(out), "--model", "fake-1", "--workers", "0"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--append"]) == 0
    err = capsys.readouterr().err
    assert "nothing new to add: all 4 images" in err and "given ids above" not in err
    indexing_fakes.write_images(folder, 2, prefix="new")
    assert main([*argv, "--append"]) == 0
    assert "given ids above the existing maximum" in capsys.readouterr().err  # a real renumbering still says so


def test_dataset_json_with_a_utf8_bom_is_read(tmp_path: Path, capsys) -> None:
    from engine.data import load_dataset

    root = tmp_path / "ds"
    indexing_fakes.write_karpathy(root, 3)
    text = (root / "dataset.json").read_text(encoding="utf-8")
    (root / "dataset.json").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert len(load_dataset(root).images) == 3
    assert main(["data", "check", str(root)]) == 0


def test_model_flag_is_one_name_and_checkpoint_a_hidden_alias(capsys) -> None:
    """eval, query and serve take --model like index; --checkpoint still works but is not in the help."""
    for command in (["eval"], ["query"], ["serve"], ["index", "build"]):
        assert main([*command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--model" in text and "--checkpoint" not in text, command
