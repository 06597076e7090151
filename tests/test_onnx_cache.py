"""The on-disk cache of exported ONNX graphs (encoders.onnx_cache): a second build skips the export, every number
of test-time views shares one graph, other weights get their own, and a damaged, stale or unwritable cache costs
an export, never an error or a wrong embedding. Also: decode processes by default only where they pay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from encoders import onnx_cache
from encoders.image_runtime import MIN_COSINE, build_image_runtime, probe_pixels


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(onnx_cache.CACHE_ENV, raising=False)
    return tmp_path / "home" / onnx_cache.FOLDER


@pytest.fixture()
def exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts torch.onnx.export calls (the work the cache saves)."""
    calls: list[str] = []
    real = torch.onnx.export

    def counting(*args, **kwargs):
        calls.append(type(args[0]).__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting)
    return calls


def _tiny(seed: int = 0):
    import encoders

    torch.manual_seed(seed)
    return encoders.create_model("tiny-test").eval()


def _encode(runtime, model) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = probe_pixels(model, count=3, seed=5)
    with torch.inference_mode():
        return runtime.encode_image(pixels), model.encode_image(pixels)


def _faithful(runtime, model) -> bool:
    got, expected = _encode(runtime, model)
    return float(torch.nn.functional.cosine_similarity(got, expected, dim=-1).min()) >= MIN_COSINE


def test_second_build_reads_the_graph_from_disk_for_any_number_of_views(home, exports) -> None:
    model = _tiny()
    first = build_image_runtime(model, "onnx")
    assert first is not None and len(exports) == 1
    assert len(list(home.glob("*.onnx"))) == 1
    second = build_image_runtime(model, "onnx")
    assert second is not None and len(exports) == 1, "the second build exported again"
    model.set_test_time_views(4)  # one graph serves every number of views (it encodes one view)
    third = build_image_runtime(model, "onnx")
    assert third is not None and len(exports) == 1
    assert _faithful(third, model)


def test_other_weights_get_their_own_graph(home, exports) -> None:
    model = _tiny(0)
    assert build_image_runtime(model, "onnx") is not None
    other = _tiny(1)
    runtime = build_image_runtime(other, "onnx")
    assert runtime is not None and len(exports) == 2
    assert _faithful(runtime, other)
    with torch.no_grad():  # a weight changed in place: a new identity, a new graph
        next(other.vision.parameters()).add_(0.5)  # inside the exported backbone
    runtime = build_image_runtime(other, "onnx")
    assert len(exports) == 3 and runtime is not None and _faithful(runtime, other)


def test_a_damaged_file_costs_one_export(home, exports) -> None:
    model = _tiny()
    assert build_image_runtime(model, "onnx") is not None
    (cached,) = home.glob("*.onnx")
    cached.write_bytes(b"not an onnx graph")
    runtime = build_image_runtime(model, "onnx")
    assert runtime is not None and len(exports) == 2
    assert _faithful(runtime, model)
    assert cached.read_bytes() != b"not an onnx graph"


def test_a_stale_graph_that_fails_the_check_is_replaced(home, exports) -> None:
    model, other = _tiny(0), _tiny(1)
    assert build_image_runtime(other, "onnx") is not None
    (other_file,) = home.glob("*.onnx")
    key = onnx_cache.cache_key(model, "image-tokens", {"pixels": list(probe_pixels(model, 2).shape[1:]),
                                                       "opset": 17})
    stale = home / f"{key}.onnx"
    stale.write_bytes(other_file.read_bytes())  # a valid graph, of other weights, under this model's key
    runtime = build_image_runtime(model, "onnx")
    assert runtime is not None and _faithful(runtime, model)
    assert len(exports) == 2, "the stale graph should have been discarded and exported afresh"
    assert stale.read_bytes() != other_file.read_bytes()


def test_an_unwritable_cache_is_no_error(tmp_path, monkeypatch, exports) -> None:
    blocker = tmp_path / "home"
    blocker.write_text("a file where the folder should be")
    monkeypatch.setenv("ENGINE_HOME", str(blocker))
    model = _tiny()
    assert build_image_runtime(model, "onnx") is not None
    assert build_image_runtime(model, "onnx") is not None
    assert len(exports) == 2


def test_switched_off(home, exports, monkeypatch) -> None:
    monkeypatch.setenv(onnx_cache.CACHE_ENV, "0")
    model = _tiny()
    build_image_runtime(model, "onnx")
    build_image_runtime(model, "onnx")
    assert len(exports) == 2 and not home.exists()


def test_least_recently_used_graphs_are_evicted(home, monkeypatch) -> None:
    monkeypatch.setattr(onnx_cache, "MAX_FILES", 2)
    model = _tiny()
    for number in range(3):
        onnx_cache.exported(model, f"graph-{number}", {}, lambda number=number: f"bytes {number}".encode())
        stamp = 1_000_000 + number
        for path in home.glob("*.onnx"):
            if path.read_bytes() == f"bytes {number}".encode():
                os.utime(path, (stamp, stamp))
    assert sorted(path.read_bytes() for path in home.glob("*.onnx")) == [b"bytes 1", b"bytes 2"]
    assert onnx_cache.exported(model, "graph-2", {}, lambda: b"exported again") == b"bytes 2"  # from the cache


def test_caption_encoder_reads_its_graph_from_disk(home, exports) -> None:
    from encoders.batch_text import build_batch_text_encoder

    model = _tiny()
    first = build_batch_text_encoder(model, "onnx")
    assert first is not None and exports == ["_TextQueryGraph"]
    second = build_batch_text_encoder(model, "onnx")
    assert second is not None and len(exports) == 1
    texts = ["a runway", "many green trees around a pond"]
    with torch.inference_mode():
        assert torch.allclose(second(texts), model.encode_text(texts), atol=1e-4)


@pytest.mark.parametrize(("cores", "device", "expected"), [(1, "cpu", 0), (2, "cpu", 0), (4, "cpu", 3),
                                                          (16, "cpu", 8), (2, "cuda", 1), (8, "cuda", 7)])
def test_decode_processes_only_where_they_pay(monkeypatch, cores, device, expected) -> None:
    from indexing import encode

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert encode.default_workers(torch.device(device)) == expected
