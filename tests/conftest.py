"""Test-wide settings: never touch the network, keep torch to the machine's cores, locate the real data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The query engine remembers the last index built in the project folder (and builds its default index under
# ENGINE_HOME); tests must touch neither the checkout nor the user's cache.
os.environ["ENGINE_HOME"] = tempfile.mkdtemp(prefix="engine-home-tests-")
os.environ["ENGINE_PROJECT"] = tempfile.mkdtemp(prefix="engine-project-tests-")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def ucm_dir() -> Path:
    """The real UCM-captions copy beside the checkout; tests that need it skip when it is absent."""
    path = SHARED_DATA / "ucm_captions"
    if not (path / "dataset.json").is_file():
        pytest.skip("../shared/data/ucm_captions is not available")
    return path


@pytest.fixture(scope="session")
def aid_dir() -> Path:
    path = SHARED_DATA / "aid"
    if not path.is_dir():
        pytest.skip("../shared/data/aid is not available")
    return path


@pytest.fixture(autouse=True)
def _image_limits_per_test():
    """A command run in-process with --max-image-pixels sets process-wide limits (engine/data/image_guard.py:
    the module's setting, $ENGINE_MAX_IMAGE_PIXELS for worker processes, PIL's bomb limit); each test starts
    from, and leaves, the defaults."""
    from PIL import Image

    from engine.data import image_guard

    saved = (image_guard._configured, os.environ.get(image_guard.MAX_PIXELS_ENV), Image.MAX_IMAGE_PIXELS)
    yield
    image_guard._configured = saved[0]
    if saved[1] is None:
        os.environ.pop(image_guard.MAX_PIXELS_ENV, None)
    else:
        os.environ[image_guard.MAX_PIXELS_ENV] = saved[1]
    Image.MAX_IMAGE_PIXELS = saved[2]
