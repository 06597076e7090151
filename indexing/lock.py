"""One build at a time per index folder: ``INDEX_DIR/build.lock`` holds the owner's pid, host and start time.

Two ``engine index`` runs into one folder would both encode the same pending shards (and two ``--append`` runs
would plan overlapping segments), so the second run must stop at once, before loading a model. The lock file
is created with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+) and removed when the build ends, however it ends
short of ``kill -9``. A lock left behind by a killed build is *stale* when it names this host and a process
that no longer exists (or a recycled pid: the process start time differs); a stale lock is replaced with a
note. A lock from another host cannot be checked from here: the message says how to clear it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from engine.errors import ConfigError
from indexing.layout import LOCK_FILE



def _process_start(pid: int) -> str | None:
    """Kernel start time of ``pid`` (Linux ``/proc``), to tell a live owner from a recycled pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of stat: starttime


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


def _describe(owner: dict) -> str:
    return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
            + (f": {owner['command']}" if owner.get("command") else ""))


def read_owner(index_dir: Path) -> dict | None:
    """The recorded owner of ``index_dir``'s lock, or None when there is no (readable) lock."""
    try:
        return json.loads((Path(index_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def owner_is_running(owner: dict) -> bool | None:
    """True/False for a lock of this host; None when it names another host (cannot be checked)."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return False
    recorded, current = owner.get("process_start"), _process_start(pid)
    return recorded is None or current is None or recorded == current


class BuildLock:
    """``with BuildLock(out):`` — holds ``out/build.lock`` for the duration of a build.

    Creates ``out`` when missing and removes it again on release if the build left nothing in it."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = Path(index_dir)
        self.path = self.index_dir / LOCK_FILE
        self.created_dir = False
        self.held = False

    def __enter__(self) -> "BuildLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.index_dir.exists():
            try:
                self.index_dir.mkdir(parents=True)
                self.created_dir = True
            except FileExistsError:
                pass
            except OSError as error:
                raise ConfigError(f"--out {self.index_dir}: cannot create the folder "
                                  f"({error.strerror or error})") from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
                 "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "command": " ".join(["engine", *sys.argv[1:]])[:500]}
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_if_stale()
                continue
            except OSError as error:
                self._undo_dir()
                raise ConfigError(f"--out {self.index_dir}: cannot write {LOCK_FILE} "
                                  f"({error.strerror or error})") from None
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(owner, handle)
                handle.write("\n")
            self.held = True
            return
        raise ConfigError(f"--out {self.index_dir}: could not take {LOCK_FILE} (another build keeps creating it)")

    def _clear_if_stale(self) -> None:
        owner = read_owner(self.index_dir)
        if owner is None:
            # being written right now, or unreadable: give a concurrent writer a moment before judging
            time.sleep(0.2)
            owner = read_owner(self.index_dir)
            if owner is None:
                if self.path.exists() and time.time() - self.path.stat().st_mtime < 5:
                    self._refuse("another build is starting in this folder")
                self.path.unlink(missing_ok=True)  # empty/corrupt lock older than 5 s: nobody is writing it
                return
        running = owner_is_running(owner)
        if running is False:
            print(f"note: --out {self.index_dir}: removed a stale {LOCK_FILE} ({_describe(owner)}; that process "
                  "is no longer running)", file=sys.stderr)
            self.path.unlink(missing_ok=True)
            return
        if running is None:
            self._refuse(f"a build on another host holds {self.path} ({_describe(owner)}); if it is no longer "
                         f"running, delete {self.path} and rerun")
        self._refuse(f"another build is running into this folder ({_describe(owner)}); wait for it to finish "
                     "(one build per index folder)")

    def _refuse(self, message: str) -> None:
        self._undo_dir()
        raise ConfigError(f"--out {self.index_dir}: {message}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        self._undo_dir()

    def _undo_dir(self) -> None:
        if self.created_dir:
            try:
                self.index_dir.rmdir()  # only when empty: a build that wrote something keeps its folder
            except OSError:
                pass
            self.created_dir = False
