"""The app's door into core: one `Workbench`, called statically, and the few page helpers built on it.

Nothing here computes embeddings or trains. Errors become one sentence for the page (`message`), and every
unexpected one is logged with its traceback first, so nothing the user saw is lost from the server log.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from core.errors import WorkbenchError
from core.runs import SHIPPED_CHECKPOINTS
from core.workbench import VARIANT_DESCRIPTIONS, ZERO_SHOT, Variant, Workbench

log = logging.getLogger(__name__)

__all__ = ["Backend", "Startup", "Warmth", "WARM_ZERO_SHOT", "SHIPPED_CHECKPOINTS", "VARIANT_DESCRIPTIONS", "describe", "message", "variant_label"]


def configure_logging() -> None:
    """Log lines with time, level and module on stderr (NOTELLM2_LOG_LEVEL, default INFO); a no-op when the
    host process configured logging already."""
    logging.basicConfig(level=os.environ.get("NOTELLM2_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# Zero-shot baselines whose vectors of the sample start-up encodes once the demo variants are warm: the frozen
# small encoders (seconds each). zs-llm and zs-mlrm run the LLM over every note, which would hold the CPU
# for minutes that a user's own searches need; they encode on first use.
WARM_ZERO_SHOT = ("zs-text", "zs-image", "zs-concat")


@dataclass
class Warmth:
    """How many of a variant's vectors of the start-up dataset are ready: `done` of `total` (notes times
    modalities), so the banner can say "warm" or "encoding n of N"."""
    name: str
    done: int = 0
    total: int = 0
    state: str = "queued"  # queued | encoding | warm | failed
    error: str = ""


@dataclass
class Startup:
    """Background start-up work (sample import, demo checkpoints, then the demo variants' vectors checked
    and their indexes built; cheap baselines encoded after): the page shows it, never waits on it. `state`
    turns "ready" once every shipped variant is warm, so a search after that encodes none of the sample."""
    state: str = "pending"  # pending | running | ready | failed
    message: str = "starting"
    sample: str | None = None
    demo_runs: list[str] = field(default_factory=list)
    warmth: dict[str, Warmth] = field(default_factory=dict)  # in the order the banner lists them
    warming: bool = False  # encoding after "ready" (the cheap baselines) still going
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settled(self) -> bool:
        """Nothing left for the page to follow."""
        return self.state in ("ready", "failed") and not self.warming


class Backend:
    def __init__(self, workspace=None):
        configure_logging()
        self.workbench = Workbench(workspace)
        self.workspace = self.workbench.workspace
        self.startup = Startup()

    # ------------------------------------------------------------------------------------ data
    @property
    def store(self):
        return self.workbench.store

    def dataset_names(self) -> list[str]:
        return self.workbench.dataset_names()

    def default_dataset(self) -> str | None:
        names = self.dataset_names()
        if "sample" in names:
            return "sample"
        return names[0] if names else None

    def related(self, dataset: str) -> Mapping[str, frozenset[str]]:
        """note_id -> ids it is paired with (the known related notes, both directions); read-only."""
        return self.workbench.related(dataset)

    # ------------------------------------------------------------------------------------ variants
    def variants(self, dataset: str | None) -> list[Variant]:
        """Everything a view can show for a dataset: finished runs first, then zero-shot baselines."""
        return self.workbench.variants(dataset)

    def variant_choices(self, dataset: str | None, include_zero_shot: bool = True,
                        trained_only: bool = False) -> list[tuple[str, str]]:
        return [(variant_label(v), v.name) for v in self.variants(dataset)
                if not (v.zero_shot and (trained_only or not include_zero_shot))]

    def variant_row(self, dataset: str | None, name: str) -> Variant:
        for row in self.variants(dataset):
            if row.name == name:
                return row
        return self.workbench.variant(dataset, name) if name in ZERO_SHOT else \
            Variant(name=name, kind="run", variant=name, dataset=dataset or "")

    # ------------------------------------------------------------------------------------ start-up
    def start_background(self, warm_zero_shot: tuple[str, ...] = WARM_ZERO_SHOT) -> threading.Thread:
        def work():
            self._startup()
            if self.startup.state == "ready" and warm_zero_shot:
                self._warm_extras(warm_zero_shot)

        self.startup.warming = bool(warm_zero_shot)
        thread = threading.Thread(target=work, name="workbench-startup", daemon=True)
        thread.start()
        return thread

    def _startup(self) -> None:
        s = self.startup
        s.state, s.message = "running", "importing the bundled sample dataset…"
        try:
            s.sample = self.workbench.ensure_sample()
            s.message = "sample dataset ready"
            s.demo_runs = self.workbench.install_checkpoints()
            shipped = [run for run in s.demo_runs if self.workbench.run(run).dataset == s.sample]
            s.message = "checking the demo variants' vectors…"
            self._warm(shipped, s.sample)
            s.state = "ready"
            s.message = "ready"
        except Exception as error:  # keep serving; the banner says what happened
            s.state, s.message = "failed", message(error)
            s.warming = False

    def _warm_extras(self, names: tuple[str, ...]) -> None:
        s = self.startup
        try:
            self._warm([name for name in names if name in ZERO_SHOT], s.sample)
        except Exception as error:  # the baselines still encode on first use; only the banner says so
            message(error)
        finally:
            s.warming = False

    def _warm(self, names: list[str], dataset: str | None) -> None:
        """Make each variant's vectors of `dataset` ready in every modality, in order: what the vector cache
        holds (shipped vectors included) is only read and indexed; what it lacks is encoded here, before a
        user's search would have to."""
        from core.workbench import MODALITIES

        if not dataset:
            return
        count = len(self.workbench.notes(dataset)) * len(MODALITIES)
        for name in names:  # the whole queue is listed at once, each with its size
            self.startup.warmth.setdefault(name, Warmth(name, total=count))
        for name in names:
            warmth = self.startup.warmth[name]
            try:
                done = {m: self.workbench.cached_count(name, dataset, m)[0] for m in MODALITIES}
                notes = self.workbench.cached_count(name, dataset, MODALITIES[0])[1]
                warmth.total, warmth.done = notes * len(MODALITIES), sum(done.values())
                warmth.state = "warm" if warmth.done == warmth.total else "encoding"
                for modality in MODALITIES:
                    def progress(finished, todo, modality=modality):
                        # `todo` counts the notes the cache lacked; the rest were ready already.
                        # Never backwards: an encoder in two parts (zs-concat) counts each part from 0.
                        done[modality] = max(done[modality], max(0, notes - todo) + finished)
                        warmth.done = sum(done.values())

                    self.workbench.dataset_vectors(name, dataset, modality, progress=progress)
                    done[modality] = notes
                    warmth.done = sum(done.values())
                warmth.state = "warm"
            except Exception as error:  # one variant that cannot encode leaves the others warm
                warmth.state, warmth.error = "failed", message(error)

    def demo_checkpoints(self) -> list[Path]:
        return self.workbench.shipped_checkpoints()


def variant_label(row: Variant) -> str:
    """"micl+late · my-run (100 steps)" or "zs-concat · zero-shot"."""
    if row.zero_shot:
        return f"{row.name} · {VARIANT_DESCRIPTIONS.get(row.name, 'zero-shot')}"
    extra = f", {row.steps} steps" if row.steps else ""
    if row.name == row.variant:
        return f"{row.variant} · trained{extra}"
    return f"{row.name} · {row.variant}{extra}"


def describe(name: str, row: Variant | None = None) -> str:
    if row is not None:
        return row.description
    return VARIANT_DESCRIPTIONS.get(name, "")


def message(error: BaseException) -> str:
    """One readable line for the page, whatever went wrong. A WorkbenchError is the user's to fix and is
    shown as it is; anything else is a bug or an environment problem: logged with its traceback here."""
    if isinstance(error, WorkbenchError):
        log.info("refused: %s", error)
        return str(error)
    log.error("unexpected error in the app", exc_info=error)
    return f"Something went wrong ({type(error).__name__}: {error}); the server log has the details."
