"""The working set panel that Explore and Search share: what was picked on the maps and marked on search
results, its export as CSV files, and "save as a new dataset version" for Fine-tune. The working set itself
lives in core (core/data/working_set.py, per dataset, in the workspace); this is only its view."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import gradio as gr

from app.backend import Backend, message
from app.render import esc, md, mark, notice
from core.errors import WorkbenchError

EXPORTS_DIR = Path(tempfile.gettempdir()) / "notellm2-working-sets"
MAX_PAYLOAD_CHARS = 2_000_000  # 50k ids of up to ~30 characters; anything longer is not from the page script
SHOWN = 8  # pairs and notes listed by title in the panel
FEW_PAIRS = 20  # below this a saved version is likely too small to split and batch (the trainer says exactly)


def read_payload(value) -> dict | None:
    """The JSON object the page script wrote into a hidden textbox, or None for an empty box. Anything else
    (too long, not JSON, not an object) is refused: the box is reachable by any client, not only the page."""
    text = str(value or "").strip()
    if not text:
        return None
    if len(text) > MAX_PAYLOAD_CHARS:
        raise WorkbenchError("the selection is too large: pick fewer notes at once")
    try:
        payload = json.loads(text)
    except ValueError:
        raise WorkbenchError("the page sent a selection that is not JSON") from None
    if not isinstance(payload, dict):
        raise WorkbenchError("the page sent a selection that is not an object")
    return payload


def suggest_name(dataset: str, existing) -> str:
    """A free name for the next version of `dataset`: <base>-v2, -v3, ... (base without a -vN ending)."""
    base = re.sub(r"-v\d+$", "", dataset or "dataset")[:90] or "dataset"
    taken = set(existing)
    number = 2
    while f"{base}-v{number}" in taken:
        number += 1
    return f"{base}-v{number}"


def _title(backend: Backend, dataset: str, note_id: str) -> str:
    try:
        return backend.workbench.note(dataset, note_id).title or note_id
    except WorkbenchError:
        return note_id


def summary_html(backend: Backend, dataset) -> str:
    """Counts, then the latest pairs and picked notes by title (every user text escaped)."""
    if not dataset:
        return notice("No dataset yet: import one in the Data tab.", "warn")
    try:
        working = backend.workbench.working_set(dataset)
    except Exception as error:
        return notice(message(error), "warn")
    head = (f'<div class="wb-ws-counts" data-notes="{len(working.notes)}" data-related="{len(working.related)}" '
            f'data-negatives="{len(working.negatives)}"><b>{len(working.notes)}</b> notes picked · '
            f'<b>{len(working.related)}</b> related pairs · <b>{len(working.negatives)}</b> hard negatives '
            f'<span class="wb-small">(working set of {esc(dataset)})</span></div>')
    if working.empty:
        return head + ('<div class="wb-small">Empty. Draw a box or a lasso on an Explore map (toolbar above the map) '
                       'to pick notes; mark Search results <i>related</i> or <i>not related</i> to their query to '
                       'collect pairs.</div>')
    parts = [head]
    for label, pairs, joint in (("related", working.related, "↔"), ("not related", working.negatives, "≠")):
        if pairs:
            items = "".join(f"<li>{esc(_title(backend, dataset, a))} <b>{joint}</b> {esc(_title(backend, dataset, b))}"
                            f' <span class="wb-small">({esc(a)}, {esc(b)})</span></li>' for a, b in pairs[-SHOWN:])
            more = f" (latest {SHOWN} of {len(pairs)})" if len(pairs) > SHOWN else ""
            parts.append(f'<div class="wb-ws-list"><div class="wb-small">Marked {label}{more}</div><ul>{items}</ul></div>')
    if working.notes:
        chips = "".join(f'<span class="wb-badge" title="{esc(i)}">{esc(_title(backend, dataset, i)[:40])}</span>'
                        for i in working.notes[-SHOWN * 2:])
        more = f" (latest {SHOWN * 2} of {len(working.notes)})" if len(working.notes) > SHOWN * 2 else ""
        parts.append(f'<div class="wb-ws-list"><div class="wb-small">Picked notes{more}</div>{chips}</div>')
    return "".join(parts)


def build(backend: Backend, dataset: gr.Dropdown, prefix: str, open_: bool = True) -> dict:
    """The panel; returns its summary component and a refresh handle (fn, inputs, outputs) for the tab's."""
    with gr.Accordion("Working set: training data from your picks", open=open_, elem_id=f"{prefix}-ws"):
        summary = gr.HTML(elem_id=f"{prefix}-ws-summary")
        with gr.Row():
            export = gr.Button("Export CSVs", size="sm", elem_id=f"{prefix}-ws-export")
            clear_notes = gr.Button("Clear picked notes", size="sm", elem_id=f"{prefix}-ws-clear-notes")
            clear_marks = gr.Button("Clear marks", size="sm", elem_id=f"{prefix}-ws-clear-marks")
        files = gr.File(label="pairs.csv (note_id_1,note_id_2), hard_negatives.csv (query_id,negative_id), "
                              "working_set_notes.csv", file_count="multiple", interactive=False, visible=False,
                        elem_id=f"{prefix}-ws-files")
        with gr.Row():
            name = gr.Textbox(label="New dataset name", max_lines=1, scale=2, elem_id=f"{prefix}-ws-name")
            notes = gr.Radio([("picked notes (and the notes of marked pairs)", "picked"), ("all notes", "all")],
                             value="picked", label="Notes", scale=3)
            pairs = gr.Radio([("its pairs + marked related pairs", "add"), ("marked related pairs only", "marked")],
                             value="add", label="Pairs", scale=3)
            save = gr.Button("Save as new dataset", variant="primary", scale=1, elem_id=f"{prefix}-ws-save")
        status = gr.Markdown(elem_classes=["wb-small"], elem_id=f"{prefix}-ws-status")

    def refresh(ds):
        suggestion = suggest_name(ds, backend.dataset_names()) if ds else ""
        return summary_html(backend, ds), gr.update(placeholder=suggestion)

    def on_export(ds):
        if not ds:
            return gr.update(), f"{mark('warn')} Choose a dataset first."
        try:
            EXPORTS_DIR.mkdir(parents=True, exist_ok=True)
            folder = tempfile.mkdtemp(prefix=f"{ds}-", dir=EXPORTS_DIR)
            written = backend.workbench.working_set_export(ds, folder)
        except Exception as error:
            return gr.update(), f"{mark('warn')} {md(message(error))}"
        # Shown once there is something to download: an empty file box is a large blank on the page.
        return (gr.update(value=[str(p) for p in written.values()], visible=True),
                f"{mark('ok')} Exported the working set of **{md(ds)}**.")

    def on_clear(ds, what):
        try:
            backend.workbench.working_set_clear(ds, what)
        except Exception as error:
            return summary_html(backend, ds), f"{mark('warn')} {md(message(error))}"
        return summary_html(backend, ds), f"{mark('ok')} Cleared the {'picked notes' if what == 'notes' else 'marks'}."

    def on_save(ds, new, which_notes, which_pairs):
        new = (new or "").strip() or suggest_name(ds, backend.dataset_names())
        try:
            info = backend.workbench.working_set_save(ds, new, which_notes, which_pairs)
        except Exception as error:
            return gr.update(), f"{mark('warn')} {md(message(error))}", gr.update()
        few = (" Few pairs: training holds out a test split first and needs a batch of training pairs after it, so "
               "mark more or keep the dataset's pairs." if info.pairs < FEW_PAIRS else "")
        return (gr.update(choices=backend.dataset_names()),
                f"{mark('ok')} Saved **{md(info.name)}**: {info.notes} notes, {info.pairs} "
                f"pair{'s' if info.pairs != 1 else ''}. Choose it at the top and train on it in **Fine-tune**.{few}",
                gr.update(value="", placeholder=suggest_name(ds, backend.dataset_names())))

    export.click(on_export, [dataset], [files, status], api_name=False)
    clear_notes.click(lambda ds: on_clear(ds, "notes"), [dataset], [summary, status], api_name=False)
    clear_marks.click(lambda ds: on_clear(ds, "pairs"), [dataset], [summary, status], api_name=False)
    save.click(on_save, [dataset, name, notes, pairs], [dataset, status, name], api_name=False)
    return {"summary": summary, "status": status, "refresh": (refresh, [dataset], [summary, name])}
