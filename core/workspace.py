"""Where a workbench keeps its state: one folder, laid out as docs/ARCHITECTURE.md describes it."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import WorkbenchError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKSPACE = REPO_ROOT / "data" / "workspace"

# Names arrive from forms, the HTTP API and the command line, and become folder names and worker arguments.
# Matched as whole strings (re.fullmatch: `$` would let a trailing newline through); the first character
# is a letter or digit, so a name is never hidden (".x"), never a flag ("-h", "--resume") and never "..".
# Run names may hold '+' because the variants themselves do ("micl+late").
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# The zero-shot baselines (built in core/baselines.py, which takes this list from here).
ZERO_SHOT_NAMES = ("zs-text", "zs-image", "zs-concat", "zs-llm", "zs-mlrm")


def _shown(name) -> str:
    """A name as an error message may quote it: repr (newlines visible), cut short."""
    text = repr(str(name))
    return text if len(text) <= 60 else text[:57] + "…'"


def check_run_name(name) -> str:
    """`name` if it can name a run folder, else WorkbenchError (which never quotes a path)."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise WorkbenchError(f"bad run name {_shown(name)}: start with a letter or digit, then letters, digits, "
                             "'.', '_', '+' or '-' (at most 200)")
    if name.startswith("zs-"):
        raise WorkbenchError(f"bad run name {_shown(name)}: the zs- prefix is kept for the zero-shot baselines")
    return name


def check_dataset_name(name) -> str:
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        raise WorkbenchError(f"bad dataset name {_shown(name)}: start with a letter or digit, then letters, digits, "
                             "'.', '_' or '-' (at most 100)")
    return name


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, path: str | os.PathLike | None = None) -> "Workspace":
        root = Path(path or os.environ.get("NOTELLM2_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve()
        for sub in ("images", "runs", "indexes"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def db_path(self) -> Path:
        return self.root / "workbench.db"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def indexes_dir(self) -> Path:
        return self.root / "indexes"

    def run_dir(self, run: str) -> Path:
        """The folder a run lives (or will live) in; refuses any name that is not a plain run name."""
        return self.runs_dir / check_run_name(run)

    def resolve_variant(self, name) -> str | Path:
        """The one door from a variant name in a request to what it denotes: a zero-shot baseline's name
        (returned as is) or the folder of a run that exists directly under runs/. Anything else (a path,
        '..', a separator, an unknown name) is refused with a message that names no path."""
        if isinstance(name, str) and name in ZERO_SHOT_NAMES:
            return name
        try:
            folder = self.run_dir(name)
        except WorkbenchError:
            raise WorkbenchError(f"unknown run or baseline {_shown(name)}: neither a zero-shot baseline "
                                 f"({', '.join(ZERO_SHOT_NAMES)}) nor a run name") from None
        # is_dir() follows links: a link under runs/ pointing elsewhere is not one of our runs.
        if folder.is_symlink() or not folder.is_dir():
            raise WorkbenchError(f"unknown run or baseline {_shown(name)}: no such run in this workspace")
        return folder
