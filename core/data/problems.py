"""Problems found in an upload: where (file, row) and why, and how they read to a user.

Rows are counted as a spreadsheet shows them: for CSV the physical line where the record starts
(the header is line 1, the first data row line 2), for JSONL the line number. `row` is 0 for a
problem with the whole file (a missing column, a bad encoding), or an archive entry.
"""
from __future__ import annotations

from typing import NamedTuple

from core.errors import WorkbenchError

# How many problems an error message spells out before it says "and N more".
MAX_LISTED_PROBLEMS = 20


class Problem(NamedTuple):
    file: str
    row: int
    reason: str

    def __str__(self) -> str:
        where = f"{self.file} line {self.row}" if self.row else self.file
        return f"{where}: {self.reason}"


def summarise(problems: list[Problem], limit: int = MAX_LISTED_PROBLEMS) -> str:
    """One line: the first `limit` problems, then a count of the rest."""
    shown = "; ".join(str(p) for p in problems[:limit])
    rest = len(problems) - limit
    return shown + (f"; ... and {rest} more" if rest > 0 else "")


class UploadError(WorkbenchError):
    """An upload that cannot be imported as it is. `.problems` lists every problem found (for the UI)."""

    def __init__(self, problems: list[Problem], headline: str, hint: str = ""):
        self.problems = list(problems)
        count = len(self.problems)
        message = f"{headline}: {count} problem{'s' if count != 1 else ''}: {summarise(self.problems)}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)
