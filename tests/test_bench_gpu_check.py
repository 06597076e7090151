"""bench/gpu_check.py's comparisons, run in their CPU fallback (no GPU here): the code the GPU run relies on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

pytest.importorskip("faiss")

from bench import gpu_check  # noqa: E402


def test_faiss_check_compares_and_passes_in_cpu_fallback() -> None:
    result = gpu_check.check_faiss(3000, cpu_fallback=True, lists=32)
    assert result["device"] == "cpu (fallback)" and result["passed"]
    assert result["flat_top10_agreement"] == 1.0 and 0 < result["ivf_recall_cpu"] <= 1


def test_faiss_check_refuses_to_pretend_without_a_gpu(monkeypatch) -> None:
    import faiss

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    with pytest.raises(SystemExit, match="faiss sees no GPU"):
        gpu_check.check_faiss(1000, cpu_fallback=False, lists=8)


def test_embeddings_check_reencodes_stored_vectors(tmp_path) -> None:
    import indexing_fakes

    from indexing.build import IndexOptions, run_index

    indexing_fakes.write_karpathy(tmp_path / "ds", 6, captions_per_image=1)
    run_index(IndexOptions(data_dir=tmp_path / "ds", out=tmp_path / "index", model_spec="tiny-test", workers=0))
    result = gpu_check.check_embeddings(tmp_path / "index", sample=4, cpu_fallback=True)
    assert result["passed"] and result["images"] == 4 and result["min_cosine"] >= 0.9999
    with pytest.raises(SystemExit, match="not cuda"):
        gpu_check.check_embeddings(tmp_path / "index", sample=4, cpu_fallback=False)
