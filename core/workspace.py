"""Where a workbench keeps its state: one folder, laid out as DESIGN.md fixes it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKSPACE = REPO_ROOT / "data" / "workspace"


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
        return self.runs_dir / run
