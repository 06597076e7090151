"""Collecting or raising data problems: one reader code path serves both ``load_dataset`` and ``data check``.

Readers report every inconsistency through a ``ProblemLog``. In strict mode (``load_dataset``: training,
indexing and evaluation must not run on broken data) the first error raises ``DataError`` at once; in collecting
mode (``engine data check``) errors are gathered so the user sees all of them in one run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.errors import DataError

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Problem:
    """One finding: ``where`` names the file or JSON field, ``message`` says what was expected."""

    severity: Severity
    code: str  # stable machine name, e.g. "missing-image", "empty-caption"
    where: str
    message: str

    def line(self) -> str:
        return f"{self.where}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "code": self.code, "where": self.where, "message": self.message}


@dataclass
class ProblemLog:
    """Ordered findings; ``strict=True`` turns the first error into a ``DataError`` (codes in ``tolerated`` stay
    warnings)."""

    strict: bool = True
    problems: list[Problem] = field(default_factory=list)
    tolerated: frozenset[str] = frozenset()  # error codes recorded as warnings (indexing skips such images)

    def error(self, code: str, where: str, message: str) -> None:
        if code in self.tolerated:
            self.warning(code, where, message)
            return
        problem = Problem("error", code, where, message)
        if self.strict:
            raise DataError(problem.line())
        self.problems.append(problem)

    def warning(self, code: str, where: str, message: str) -> None:
        self.problems.append(Problem("warning", code, where, message))

    def info(self, code: str, where: str, message: str) -> None:
        self.problems.append(Problem("info", code, where, message))

    def of(self, severity: Severity) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == severity]

    @property
    def has_errors(self) -> bool:
        return any(problem.severity == "error" for problem in self.problems)
