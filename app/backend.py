"""The app's only door into core: plain function calls, looked up when used.

Core is written alongside the app, so a function may not exist yet in a given checkout. Every call goes
through `Backend.call`, which raises `Unavailable` with a sentence for the page instead of crashing a tab.
Nothing here computes embeddings or trains: the few helpers below only reshape what core returns.
"""
from __future__ import annotations

import importlib
import os
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import WorkbenchError
from core.workspace import REPO_ROOT, Workspace

SHIPPED_CHECKPOINTS = REPO_ROOT / "assets" / "checkpoints"


def checkpoints_dir() -> Path:
    """Shipped demo checkpoints; NOTELLM2_CHECKPOINTS points elsewhere (the app tests use tiny runs only)."""
    return Path(os.environ.get("NOTELLM2_CHECKPOINTS") or SHIPPED_CHECKPOINTS)

# What each variant is, in one line, so that no table or dropdown shows a bare code name.
VARIANT_DESCRIPTIONS = {
    "text": "LLM on the text prompt only (no image)",
    "basic": "image tokens in the prompt (basic MLRM)",
    "micl": "mICL: image compressed first, then the text",
    "late": "text prompt + late-fusion gate with the image feature",
    "basic+late": "image tokens in the prompt + late fusion",
    "micl+late": "mICL + late fusion (= NoteLLM-2)",
    "zs-text": "zero-shot: frozen text embedder (MiniLM)",
    "zs-image": "zero-shot: frozen vision encoder",
    "zs-concat": "zero-shot: text and image embedders concatenated",
    "zs-llm": "zero-shot: untrained MLRM (no fine-tuning)",
}
TRAINABLE_VARIANTS = ["text", "basic", "micl", "late", "basic+late", "micl+late"]
ZERO_SHOT = ["zs-text", "zs-image", "zs-concat", "zs-llm"]


class Unavailable(Exception):
    """A core function this tab needs is not in this checkout yet (or failed to import)."""


@dataclass
class Startup:
    """Background start-up work (sample import, demo checkpoints): the page shows it, never waits on it."""
    state: str = "pending"  # pending | running | ready | failed
    message: str = "starting"
    sample: str | None = None
    demo_runs: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Backend:
    def __init__(self, workspace=None):
        self.workspace = Workspace.open(workspace)
        self.startup = Startup()
        self._store = None

    # ------------------------------------------------------------------------------------ core lookup
    def function(self, module: str, name: str):
        try:
            mod = importlib.import_module(module)
        except ImportError as error:
            raise Unavailable(f"`{module}` is not available in this checkout yet ({error}).") from None
        except Exception as error:  # a half-written core module must not take the page down
            raise Unavailable(f"`{module}` failed to import: {type(error).__name__}: {error}") from None
        fn = getattr(mod, name, None)
        if fn is None:
            raise Unavailable(f"`{module}.{name}` is not available in this checkout yet.")
        return fn

    def has(self, module: str, name: str) -> bool:
        try:
            self.function(module, name)
            return True
        except Unavailable:
            return False

    def call(self, module: str, name: str, *args, **kwargs):
        return self.function(module, name)(*args, **kwargs)

    def service(self, name: str, *args, **kwargs):
        """core.service functions all take the workspace first."""
        return self.call("core.service", name, self.workspace, *args, **kwargs)

    def analysis_function(self, name: str):
        for module in (f"core.analysis.{_ANALYSIS_MODULES.get(name, name)}", "core.analysis"):
            try:
                return self.function(module, name)
            except Unavailable:
                continue
        raise Unavailable(f"`core.analysis.{name}` is not available in this checkout yet.")

    def analysis(self, name: str, *args, **kwargs):
        return self.analysis_function(name)(*args, **kwargs)

    # ------------------------------------------------------------------------------------ data
    @property
    def store(self):
        if self._store is None:
            Store = self.function("core.data.store", "Store")
            self._store = Store(self.workspace)
        return self._store

    def dataset_names(self) -> list[str]:
        try:
            return [d.name for d in self.store.list_datasets()]
        except Unavailable:
            return []

    def default_dataset(self) -> str | None:
        names = self.dataset_names()
        if "sample" in names:
            return "sample"
        return names[0] if names else None

    def related(self, dataset: str) -> dict[str, set[str]]:
        """note_id -> ids it is paired with (the known related notes, both directions)."""
        out: dict[str, set[str]] = {}
        for a, b in self.store.pairs(dataset):
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
        return out

    # ------------------------------------------------------------------------------------ variants
    def variants(self, dataset: str | None) -> list[dict]:
        """Everything a view can show for a dataset: finished runs first, then zero-shot baselines."""
        if not dataset:
            return []
        try:
            rows = list(self.service("list_variants", dataset))
        except Unavailable:
            return []
        return rows

    def variant_choices(self, dataset: str | None, include_zero_shot: bool = True,
                        trained_only: bool = False) -> list[tuple[str, str]]:
        choices = []
        for row in self.variants(dataset):
            if row.get("kind") == "zero-shot" and (not include_zero_shot or trained_only):
                continue
            if row.get("kind") == "run" and row.get("status") not in (None, "done", "finished", "ready", "completed"):
                continue
            choices.append((variant_label(row), row["name"]))
        return choices

    def variant_row(self, dataset: str | None, name: str) -> dict:
        for row in self.variants(dataset):
            if row["name"] == name:
                return row
        return {"name": name, "kind": "zero-shot" if name in ZERO_SHOT else "run", "variant": name}

    # ------------------------------------------------------------------------------------ start-up
    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self._startup, name="workbench-startup", daemon=True)
        thread.start()
        return thread

    def _startup(self) -> None:
        s = self.startup
        s.state, s.message = "running", "importing the bundled sample dataset…"
        try:
            s.sample = self.call("core.data.sample", "ensure_sample_dataset", self.workspace)
            s.message = "sample dataset ready"
            s.demo_runs = self._install_demo_checkpoints()
            s.state = "ready"
            s.message = "ready"
        except (Unavailable, WorkbenchError) as error:
            s.state, s.message = "failed", str(error)
        except Exception as error:  # keep serving; say what happened
            traceback.print_exc()
            s.state, s.message = "failed", f"{type(error).__name__}: {error}"

    def demo_checkpoints(self) -> list[Path]:
        if not checkpoints_dir().is_dir():
            return []
        return sorted(p for p in checkpoints_dir().iterdir() if p.is_dir() and (p / "config.json").is_file())

    def _install_demo_checkpoints(self) -> list[str]:
        """Shipped demo runs (assets/checkpoints/<variant>/) become workspace runs through core when it can."""
        found = self.demo_checkpoints()
        if not found:
            return []
        for name in ("install_checkpoints", "install_demo_checkpoints", "register_checkpoints"):
            if self.has("core.service", name):
                result = self.service(name, checkpoints_dir())
                return list(result or [p.name for p in found])
        return []


_ANALYSIS_MODULES = {
    "saliency_by_layer": "saliency",
    "image_attention": "attention",
    "gate_shares": "gate",
    "project": "projection",
    "aligned_projections": "projection",
    "compare_neighbor_lists": "compare",
    "compare_over_dataset": "compare",
    "modality_neighbors": "modality",
}


def variant_label(row: dict) -> str:
    """"micl+late · my-run (100 steps)" or "zs-concat · zero-shot"."""
    variant = row.get("variant") or row["name"]
    if row.get("kind") == "zero-shot":
        return f"{row['name']} · {VARIANT_DESCRIPTIONS.get(row['name'], 'zero-shot')}"
    steps = row.get("steps")
    extra = f", {steps} steps" if steps else ""
    if row["name"] == variant:
        return f"{variant} · trained{extra}"
    return f"{row['name']} · {variant}{extra}"


def describe(name: str, row: dict | None = None) -> str:
    variant = (row or {}).get("variant") or name
    return VARIANT_DESCRIPTIONS.get(variant, VARIANT_DESCRIPTIONS.get(name, ""))


def message(error: BaseException) -> str:
    """One readable line for the page, whatever went wrong."""
    if isinstance(error, (Unavailable, WorkbenchError)):
        return str(error)
    return f"{type(error).__name__}: {error}"
