"""Pieces several tabs share: the query picker, neighbour look-ups, variant dropdown refreshes."""
from __future__ import annotations

import threading
from collections import OrderedDict

import gradio as gr

from app.backend import Backend, describe, message
from app.render import md, note_choice
from core.workbench import Hit

MODALITIES = [("image + text", "both"), ("text only", "text"), ("image only", "image")]
MODALITY_HELP = "text only: the image is zeroed; image only: the text is emptied (query and candidates alike)"


def modality_label(modality) -> str:
    """What a page calls a modality: "image + text", "text only", "image only"."""
    return dict((value, label) for label, value in MODALITIES).get(modality, str(modality or ""))


class Generations:
    """The newest search of each browser session. Every trigger takes a number before its search is queued;
    a search whose number is no longer its session's newest is dropped (before it starts, and again when it
    ends), so the page never shows results of an older query under a newer one. A session without a number
    (an API client calling the endpoint itself) is never dropped."""

    def __init__(self, sessions: int = 4096):
        self._latest: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._sessions = sessions

    def begin(self, session) -> int:
        with self._lock:
            number = self._latest.pop(session, 0) + 1
            self._latest[session] = number
            while len(self._latest) > self._sessions:  # forget the least recently active sessions
                self._latest.popitem(last=False)
            return number

    def superseded(self, session, number) -> bool:
        with self._lock:
            newest = self._latest.get(session)
        return newest is not None and number is not None and int(number) < newest


def session_of(request) -> str:
    """The browser session a request came from ("" when unknown)."""
    return (getattr(request, "session_hash", None) or "") if request is not None else ""


def note_choices(backend: Backend, dataset, query: str = "", current=None) -> list[tuple[str, str]]:
    """A page of notes for a picker, found by the store (id or title words) rather than every title loaded:
    a million-note dataset answers as fast as the sample. The current note stays listed so it keeps its label."""
    if not dataset:
        return []
    notes = backend.store.search_notes(dataset, query or "")
    if current and current not in {n.note_id for n in notes}:
        notes = [n for n in backend.store.search_notes(dataset, str(current), 1) if n.note_id == current] + notes
    return [note_choice(n) for n in notes]


def wire_note_search(backend: Backend, dataset, note) -> None:
    """Typing in a note dropdown asks the store for matching notes (ids, then title words)."""
    def on_key(ds, current, typed: gr.KeyUpData):
        try:
            return gr.update(choices=note_choices(backend, ds, typed.input_value, current))
        except Exception as error:
            message(error)  # logged; the list stays as it was
            return gr.update()

    note.key_up(on_key, [dataset, note], note, api_name=False, show_progress="hidden", trigger_mode="always_last")


def refresh_notes(backend: Backend, dataset, current, first_by_default: bool = True, chosen_by_data: bool = False):
    """The note dropdown for a dataset: the current note when it is still there, else (`chosen_by_data`) the
    query core picks from the data (the most related titled note with a real picture), else the first (or
    none)."""
    default = None
    try:
        choices = note_choices(backend, dataset, current=current)
        if chosen_by_data and dataset and current not in [v for _, v in choices]:
            default = backend.workbench.default_query(dataset)
            if default:
                choices = note_choices(backend, dataset, current=default)
    except Exception as error:
        message(error)  # logged; an empty picker, and the tab's own action says what is wrong
        choices, default = [], None
    ids = [v for _, v in choices]
    value = (current if current in ids else default if default in ids else
             (ids[0] if ids and first_by_default else None))
    return gr.update(choices=choices, value=value)


def compose_note(title, content, topics, image):
    """A note written in the page, or None when it has neither text nor image."""
    from core.data.schema import Note
    title, content = (title or "").strip(), (content or "").strip()
    tags = [t.strip().lstrip("#") for t in (topics or "").replace("#", ",").split(",") if t.strip().lstrip("#")]
    if not (title or content or tags) and image is None:
        return None
    if image is not None:
        image = composed_image(image)
    return Note(note_id="(composed query)", title=title, content=content, topics=tags, image=image)


def composed_image(image):
    """An uploaded query image decoded through core's capped opener and shrunk as an import would: a bomb
    is refused with a sentence, and no full-size copy stays in memory."""
    import os

    from PIL import Image

    from core.data.images import ImageLimits, ImageProblem, decode_image
    from core.errors import WorkbenchError

    limits = ImageLimits()
    side = limits.max_side
    try:
        if isinstance(image, (str, os.PathLike)) and os.path.getsize(image) > limits.max_bytes:
            raise ImageProblem(f"image is {os.path.getsize(image):,} bytes, over the limit of {limits.max_bytes:,}")
        picture = decode_image(image, draft_side=side)
    except ImageProblem as problem:
        raise WorkbenchError(f"the query image cannot be used: {problem}") from None
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    return picture


def neighbours(backend: Backend, dataset, variant, note_id=None, query=None, k=10, modality="both") -> list[Hit]:
    """The k nearest notes without the query itself; core decides the ranking."""
    return backend.workbench.neighbours(variant, dataset, note_id=note_id, query=query, k=int(k), modality=modality)


def refresh_variants(backend: Backend, dataset, current, multiselect: bool = False, trained_only: bool = False,
                     default_count: int = 1):
    """Dropdown update that keeps the user's choice when it still exists.

    `current` is the value when the refresh was queued; the user may have chosen again before it lands. So
    a choice that still exists is left out of the update (the page keeps whatever it shows now), and a value
    is sent only to replace one that no longer exists."""
    choices = backend.variant_choices(dataset, trained_only=trained_only)
    names = [value for _, value in choices]
    variant_of = {row.name: row.variant or row.name for row in backend.variants(dataset)}
    if multiselect:
        current = list(current or [])
        kept = [v for v in current if v in names]
        if kept and kept == current:
            return gr.update(choices=choices)
        return gr.update(choices=choices, value=kept or _default_selection(names, default_count, variant_of))
    if current in names:
        return gr.update(choices=choices)
    return gr.update(choices=choices, value=(_default_selection(names, 1, variant_of) or [None])[0])


def _default_selection(names: list[str], count: int, variant_of: dict[str, str] | None = None) -> list[str]:
    """Prefer trained NoteLLM-2, then the basic MLRM (its ablation partner), other runs, then the strongest
    cheap baseline; runs keep core's order (newest first)."""
    variant_of = variant_of or {}

    def rank(item):
        position, name = item
        variant = variant_of.get(name, name)
        if name.startswith("zs-"):  # baselines after every trained run, whatever their architecture
            return (3 if name == "zs-concat" else 4, position)
        return ({"micl+late": 0, "basic": 1}.get(variant, 2), position)

    return [name for _, name in sorted(enumerate(names), key=rank)][:count]


def variants_legend(backend: Backend, dataset, names) -> str:
    rows = []
    for name in names or []:
        row = backend.variant_row(dataset, name)
        what = describe(name, row)
        kind = "zero-shot baseline" if row.zero_shot else (
            f"fine-tuned run, variant `{row.variant}`" + (f", {row.steps} steps" if row.steps else ""))
        rows.append(f"- **{md(name)}**: {md(what)} ({kind})")
    return "\n".join(rows)
