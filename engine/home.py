"""The engine's per-user folder: ``$ENGINE_HOME``, else ``~/.cache/rs-engine``.

It holds what can always be rebuilt: the default index (``engine.query.state``) and compiled encoders
(``encoders.onnx_cache``). Deleting it loses nothing but time.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "ENGINE_HOME"


def engine_home() -> Path:
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "rs-engine"
