"""Where and with what a benchmark ran: machine, library versions, load; plus atomic result writing."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path


VERSIONED_PACKAGES = ("numpy", "faiss-cpu", "duckdb", "pyarrow", "torch")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """nproc (usable cores), CPU model, RAM, OS and Python: enough to judge whether numbers compare."""
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": _cpu_model(), "ram_bytes": _ram_bytes(),
            "platform": platform.platform(), "python": platform.python_version()}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def load_average() -> list[float]:
    """1/5/15-minute load averages: a load well above the benchmark's threads means noisy latencies."""
    return [round(value, 2) for value in os.getloadavg()]




def machine_text(info: dict | None = None) -> str:
    """One readable line: cores, CPU model, RAM, Python."""
    info = info or machine_info()
    ram = f"{info['ram_bytes'] / 2**30:.1f} GiB RAM" if info.get("ram_bytes") else "RAM unknown"
    return f"{info['nproc']} cores ({info['cpu_model']}), {ram}, Python {info['python']}"


def command_line() -> str:
    """This run's command as a reader would retype it: ``python -m bench.NAME ARGS`` (under ``-m``,
    ``sys.argv[0]`` is the file's full path)."""
    import sys

    import __main__

    spec = getattr(__main__, "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None and spec.name else f"python {sys.argv[0]}"
    return " ".join([head, *sys.argv[1:]])


def run_meta(repo: Path) -> dict:
    """What a results file records about its run: date, commit, exact command, machine, load, libraries."""
    import time

    from engine.evaluation.report import git_commit

    return {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit(repo),
            "command": command_line(), "machine": machine_text(),
            "load_average": load_average(), "libraries": library_versions()}
