"""Scene labels derived from file names, the way RSICD and RSITMD name their images.

RSICD/RSITMD files are ``<class>_<n>.<ext>`` (``airport_12.jpg``, ``denseresidential_3.jpg``,
``baseballfield_102.tif``); a few RSICD files and all UCM/Sydney files are purely numeric (``00017.jpg``,
``1.tif``) and carry no class. Labels are lower-cased so that ``Airport_1.jpg`` and ``airport_2.jpg`` agree.
"""

from __future__ import annotations

import re
from pathlib import PurePath

# "<name><separator><digits>" where the separator is "_", "-" or " "; the name must contain a letter.
_NAMED_FILE = re.compile(r"^(?P<label>.*?[A-Za-z].*?)[_\- ]*\d+$")


def label_from_filename(filename: str) -> str | None:
    """``airport_12.jpg`` -> ``airport``; ``00017.jpg`` -> ``None`` (no derivable scene class)."""
    stem = PurePath(filename).stem.strip()
    match = _NAMED_FILE.match(stem)
    if match is None:
        return None
    label = match.group("label").strip(" _-").lower()
    return label or None
