"""Per-epoch progress bar (rich) showing the running loss, its parts and throughput in samples/s."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_console = Console(stderr=True)


class EpochProgress:
    """A context manager; disabled (no output) on non-zero ranks or when progress is off."""

    def __init__(self, epoch: int, epochs: int, steps: int, enabled: bool) -> None:
        self.enabled = enabled
        self.samples = 0
        self.started = time.perf_counter()
        self._progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=_console, disable=not enabled,
            transient=False)
        self._task = self._progress.add_task("train", total=steps, status="")

    def __enter__(self) -> "EpochProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self, samples: int, losses: dict[str, float]) -> None:
        self.samples += samples
        rate = self.samples / max(time.perf_counter() - self.started, 1e-9)
        status = " ".join(f"{name} {value:.4f}" for name, value in losses.items()) + f" | {rate:.0f} samples/s"
        self._progress.update(self._task, advance=1, status=status)

    @staticmethod
    def report(entry: dict, improved: bool) -> None:
        val = entry["val"]
        recalls = " ".join(f"{key} {val[key]:.2f}" for key in val if key != "mR")
        marker = " (best so far)" if improved else ""
        _console.print(f"epoch {entry['epoch']}: loss {entry['loss']:.4f}, val mR {val['mR']:.2f}{marker} "
                       f"[{recalls}] in {entry['seconds']:.1f}s")
