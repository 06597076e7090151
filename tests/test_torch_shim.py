"""The CPU-torch/torchvision shim: timm and transformers' BERT must import on this machine."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_timm_and_bert_import_after_shim() -> None:
    result = _run(
        "import encoders, timm, torchvision\n"
        "from transformers import BertModel\n"
        "from engine.torch_shim import ensure_torchvision_importable as e\n"
        "print(e())"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] in {"native", "declared"}


def test_shim_is_idempotent_and_nms_works() -> None:
    result = _run(
        "import torch\n"
        "from engine.torch_shim import ensure_torchvision_importable as e\n"
        "first = e(); second = e()\n"
        "import torchvision\n"
        "boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])\n"
        "keep = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)\n"
        "assert first == second, (first, second)\n"
        "print(keep.tolist())"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 2]"


def test_without_shim_plain_import_fails_or_works_natively() -> None:
    """Documents why the shim exists: on a CPU torch with PyPI's CUDA torchvision, plain import fails."""
    result = _run("import torchvision")
    if result.returncode == 0:
        pytest.skip("this machine's torchvision loads natively; the shim is a no-op here")
    assert "torchvision::nms" in result.stderr


def test_cli_registration_does_not_import_torch() -> None:
    """`engine --help` and `engine data check` must not pay torch's multi-second import."""
    result = _run("import sys, engine.cli\nprint('torch' in sys.modules, 'timm' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"
