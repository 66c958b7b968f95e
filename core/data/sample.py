"""The bundled sample (data/sample/, built from openclipart): the demo and the tests use it everywhere."""
from __future__ import annotations

from core.data.store import Store
from core.errors import WorkbenchError
from core.workspace import REPO_ROOT

SAMPLE_DIR = REPO_ROOT / "data" / "sample"
SAMPLE_NAME = "sample"


def ensure_sample_dataset(workspace=None, name: str = SAMPLE_NAME) -> str:
    """Import data/sample as dataset `name` unless the workspace has it already; returns the name.

    `workspace` is a core.workspace.Workspace, a path, or None for the default workspace."""
    store = workspace if isinstance(workspace, Store) else Store(workspace)
    if store.has_dataset(name):
        return name
    if not (SAMPLE_DIR / "notes.csv").is_file():
        raise WorkbenchError(f"the bundled sample is missing from {SAMPLE_DIR} (restore it with git checkout data/sample)")
    try:
        store.import_dataset(name, SAMPLE_DIR / "notes.csv", SAMPLE_DIR / "pairs.csv", SAMPLE_DIR / "images",
                             source="bundled sample (data/sample, openclipart)")
    except WorkbenchError:
        if not store.has_dataset(name):  # another process importing it at the same time is fine
            raise
    return name
