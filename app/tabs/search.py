"""Search tab: one query (a stored note or one composed here) -> its nearest notes under one variant, each card
saying why it is there. Clicking a card searches from its note; its "related" / "not related" marks add the
(query, result) pair to the dataset's working set (app/tabs/working_set.py) as a positive pair or a hard
negative."""
from __future__ import annotations

import logging

import gradio as gr

from app.backend import Backend, describe, message
from app.render import badge, esc, explanation, grid, mark, md, note_card, notice, query_card, related_badge, warning_toast
from app.tabs import working_set
from app.tabs.common import (MODALITIES, MODALITY_HELP, Generations, compose_note, modality_label, neighbours,
                             note_choices, refresh_notes, refresh_variants, session_of, wire_note_search)
from core.data.working_set import NOT_RELATED, RELATED
from core.explain import has_image, has_text

log = logging.getLogger(__name__)

FROM_DATASET, COMPOSE = "A note from the dataset", "Compose a note"
CLICK_SEPARATOR = "\n"  # the page writes "<note id>\n<click count>" so that clicking the same card twice still fires


def query_gaps(row, query, modality: str, composed: bool = False) -> list[str]:
    """Sentences for what the query lacks under this variant and modality (no image, no text), so an
    empty side of the query is never mistaken for a result."""
    what = "composed query" if composed else "query note"
    text, image = has_text(query), has_image(query)
    name = row.name
    gaps = []
    if modality == "image":
        if not row.reads_image:
            gaps.append(f"{name} never looks at pictures: image-only search with it compares empty texts.")
        elif not image:
            gaps.append(f"Image-only search, but the {what} has no image: it is searched as a blank picture with "
                        "no text, so these neighbours say nothing about it.")
    elif modality == "text":
        if not row.reads_text:
            gaps.append(f"{name} never reads text: text-only search with it compares blank pictures.")
        elif not text:
            gaps.append(f"Text-only search, but the {what} has no text: it is searched as an empty text with a "
                        "blank picture, so these neighbours say nothing about it.")
    else:
        if row.reads_image and not image:
            gaps.append(f"The {what} has no image, and {name} uses images: its image side is a blank (a zero "
                        "image), so only its text is compared.")
        if row.reads_text and not text and image:
            gaps.append(f"The {what} has no text: only its picture is compared.")
    return gaps


def pair_marks(query_id: str, note_id: str, current: str | None) -> str:
    """The "related" / "not related" toggles of a result card; the page script (assets/selections.js) sends a
    click to the server and flips `data-mark` at once, the server keeps the mark in the working set."""
    buttons = "".join(
        f'<button type="button" class="wb-pair-mark {cls}" data-mark="{esc(value)}" '
        f'title="{esc(hint)}">{esc(value)}</button>'
        for value, cls, hint in ((RELATED, "related", "add (query, this note) to the working set as a related pair"),
                                 (NOT_RELATED, "unrelated", "add (query, this note) to the working set as a hard negative")))
    return (f'<div class="wb-pair-marks" data-query-id="{esc(query_id)}" data-note-id="{esc(note_id)}" '
            f'data-mark="{esc(current or "")}">{buttons}</div>')


def search(backend: Backend, dataset, source, note_id, title, content, topics, image, variant, modality, k,
           gate: bool = False):
    """(query card html, results html, summary markdown)."""
    if not dataset:
        return "", notice("No dataset yet: import one in the Data tab.", "warn"), ""
    if not variant:
        return "", notice("Choose a variant to search with.", "warn"), ""
    if source == COMPOSE:
        query = compose_note(title, content, topics, image)
        if query is None:
            warning_toast("Write a title or some text, or upload an image: the query is empty.")
            return "", notice("The query is empty: give it a title, text, topics or an image.", "warn"), ""
        note_id = None
    else:
        if not note_id:
            warning_toast("Pick a note to search from.")
            return "", notice("Pick a note from the dataset first.", "warn"), ""
        query = backend.workbench.note(dataset, note_id)
    label = "Query" if note_id else "Composed query"
    try:
        rows = neighbours(backend, dataset, variant, note_id=note_id, query=None if note_id else query, k=k,
                          modality=modality)
    except Exception as error:
        return query_card(query, label), notice(message(error), "error"), ""
    row = backend.variant_row(dataset, variant)
    notices = [notice(gap, "warn") for gap in query_gaps(row, query, modality, composed=note_id is None)]
    try:
        whys = backend.workbench.explain(variant, dataset, rows, note_id=note_id,
                                         query=None if note_id else query, gate=bool(gate) and row.late_fusion)
    except Exception as error:
        whys = [None] * len(rows)
        notices.append(notice(f"No explanations for these neighbours: {message(error)}", "error"))
    related = backend.related(dataset).get(note_id, set()) if note_id else set()
    query_text, query_image = has_text(query), has_image(query)
    marks = None  # only a stored note can be one side of a pair
    if note_id:
        try:
            marks = backend.workbench.working_set(dataset)
        except Exception as error:
            notices.append(notice(f"No related / not related marks: {message(error)}", "warn"))
    cards = []
    same_category = 0
    for hit, why in zip(rows, whys):
        note = hit.note
        badges = []
        if note.note_id in related:
            badges.append(related_badge())
        if query.category and note.category == query.category:
            same_category += 1
            badges.append(badge("same category", "samecat"))
        block = explanation(why, query_text, query_image, row.reads_text, row.reads_image) if why else ""
        if marks is not None:
            block = pair_marks(note_id, note.note_id, marks.mark_of(note_id, note.note_id)) + block
        cards.append(note_card(note, rank=hit.rank, score=hit.score, badges=badges, why=block, clickable=True,
                               title_words=why.shared_words if why else (),
                               extra_class="is-related" if note.note_id in related else ""))
    found = sum(1 for hit in rows if hit.note_id in related)
    scores = [hit.score for hit in rows]
    lines = [f"**{md(variant)}** ({md(describe(variant, row))}), modality **{md(modality_label(modality))}**, "
             f"top {len(rows)}."]
    if note_id:
        lines.append(f"Known related notes found: **{found} of {len(related)}** in the top {len(rows)}"
                     + (" (this note has no recorded pair)." if not related else "."))
    if query.category:
        lines.append(f"Same category as the query: {same_category} of {len(rows)}.")
    if scores:
        ties = len(scores) - len(set(round(s, 5) for s in scores))
        lines.append(f"Scores {min(scores):.3f} – {max(scores):.3f}"
                     + (f"; {ties} tied scores (ranks among ties are arbitrary)." if ties else "."))
        lines.append("Each card: its cosine to the query under text only and under image only (this variant's "
                     "own text-only and image-only vectors), shared topics and words marked. Click a card to "
                     "search from its note" + ("; mark it *related* or *not related* to collect training pairs "
                                               "in the working set below." if note_id else "."))
    results = "".join(notices) + (grid(cards) if cards else notice("No neighbours returned.", "warn"))
    return query_card(query, label), results, "  \n".join(lines)


def clicked_note(value) -> str | None:
    """The note id the page wrote when a card was clicked ("<note id>\\n<click count>")."""
    note_id = str(value or "").rsplit(CLICK_SEPARATOR, 1)[0].strip()
    return note_id or None


def guarded_search(backend: Backend, generations: Generations, session: str, number, *args):
    """`search`, unless a newer search of the same session was asked for before it started or while it
    ran: then nothing on the page changes (gr.skip), and the newer one fills it."""
    skip = (gr.skip(), gr.skip(), gr.skip())
    if generations.superseded(session, number):
        return skip
    try:
        out = search(backend, *args)
    except Exception as error:
        out = ("", notice(message(error), "error"), "")
    return skip if generations.superseded(session, number) else out


def build(backend: Backend, dataset: gr.Dropdown):
    generations = Generations()
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            source = gr.Radio([FROM_DATASET, COMPOSE], value=FROM_DATASET, label="Query", elem_id="search-source")
            note = gr.Dropdown(label="Note (type to filter by title)", choices=[], allow_custom_value=True, elem_id="search-note")
            wire_note_search(backend, dataset, note)
            with gr.Group(visible=False) as compose_box:
                title = gr.Textbox(label="Title", elem_id="compose-title")
                content = gr.Textbox(label="Text", lines=3)
                topics = gr.Textbox(label="Topics (comma separated)")
                # A file path, not PIL: Gradio would decode the upload in full before core's capped opener
                # could refuse a decompression bomb.
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                 height=180)
            variant = gr.Dropdown(label="Variant", choices=[], allow_custom_value=True, elem_id="search-variant")
            variant_info = gr.Markdown(elem_classes=["wb-small"])
            modality = gr.Radio(MODALITIES, value="both", label="Modality of the query and candidates",
                                info=MODALITY_HELP, elem_id="search-modality")
            k = gr.Slider(1, 50, value=12, step=1, label="Neighbours (k)", elem_id="search-k")
            gate = gr.Checkbox(False, label="Show the late-fusion gate's image share on each card (one forward "
                                            "pass per card)", elem_id="search-gate")
            run = gr.Button("Search", variant="primary", elem_id="search-btn")
        with gr.Column(scale=3):
            query_html = gr.HTML(elem_id="search-query")
            summary = gr.Markdown(elem_id="search-summary")
            results = gr.HTML(elem_id="search-results")
    # Written by the page script when a result card is clicked (app/main.py).
    clicked = gr.Textbox(elem_id="search-click", elem_classes=["wb-hidden"], show_label=False, container=False,
                         lines=2)
    # Written by the page script when a card's related / not related mark is clicked: JSON {query, note, mark}.
    marked = gr.Textbox(elem_id="search-mark", elem_classes=["wb-hidden"], show_label=False, container=False)
    panel = working_set.build(backend, dataset, "search")
    number = gr.State(0)

    source.change(lambda s: (gr.update(visible=s == FROM_DATASET), gr.update(visible=s == COMPOSE)),
                  [source], [note, compose_box], api_name=False)

    def on_search(ds, s, n, t, c, tp, im, v, m, kk, g, gen, request: gr.Request):
        return guarded_search(backend, generations, session_of(request), gen, ds, s, n, t, c, tp, im, v, m, kk, g)

    def start(request: gr.Request):
        return generations.begin(session_of(request))

    def start_from_card(ds, value, request: gr.Request):
        note_id = clicked_note(value)
        gen = generations.begin(session_of(request))
        if not note_id:
            return gr.update(), gr.update(), gen
        try:
            choices = note_choices(backend, ds, current=note_id)
        except Exception as error:
            message(error)  # logged; the search itself says what is wrong
            return gr.update(value=note_id), FROM_DATASET, gen
        return gr.update(choices=choices, value=note_id), FROM_DATASET, gen

    inputs = [dataset, source, note, title, content, topics, image, variant, modality, k, gate, number]
    outputs = [query_html, results, summary]
    # Every control that changes the query takes a number first (at once, never queued behind a search), then
    # searches; while a search runs, further changes collapse into one search of the latest values, and the
    # running one is dropped if it finishes after a newer one was asked for.
    quick = dict(api_name=False, show_progress="hidden", concurrency_limit=None, trigger_mode="multiple")
    latest = dict(trigger_mode="always_last", concurrency_id="search")
    gr.on([run.click, variant.input, modality.input, note.input, k.release, gate.input], start, None, [number],
          **quick).then(on_search, inputs, outputs, api_name="search", **latest)
    # .change, not .input: Gradio's textbox reports "input" on key presses only, and the page sets the value.
    clicked.change(start_from_card, [dataset, clicked], [note, source, number], **quick).then(
        on_search, inputs, outputs, api_name=False, **latest)
    def on_mark(ds, value):
        try:
            payload = working_set.read_payload(value)
            if not payload:
                return gr.update(), gr.update()
            query_id, note_id, kind = payload.get("query"), payload.get("note"), payload.get("mark") or None
            backend.workbench.working_set_mark(ds, query_id, note_id, kind)
        except Exception as error:
            warning_toast(message(error)[:200])
            return working_set.summary_html(backend, ds), f"{mark('warn')} {md(message(error))}"
        said = {RELATED: "a related pair", NOT_RELATED: "a hard negative"}.get(kind, "unmarked")
        return (working_set.summary_html(backend, ds),
                f"{mark('ok')} {md(note_id)} for query {md(query_id)}: {said}.")

    # Every mark counts ("multiple"), in the order given (one at a time), so quick marks are neither lost nor
    # shown out of order.
    marked.change(on_mark, [dataset, marked], [panel["summary"], panel["status"]], api_name=False,
                  show_progress="hidden", trigger_mode="multiple", concurrency_limit=1,
                  concurrency_id="working-set")
    variant.change(lambda ds, v: f"{describe(v, backend.variant_row(ds, v))}" if v else "",
                   [dataset, variant], variant_info, api_name=False)

    panel_refresh, _, panel_outputs = panel["refresh"]

    def refresh(ds, current_note, current_variant):
        return (refresh_notes(backend, ds, current_note, chosen_by_data=True),
                refresh_variants(backend, ds, current_variant), *panel_refresh(ds))

    return {"refresh": (refresh, [dataset, note, variant], [note, variant, *panel_outputs]), "note": note,
            "variant": variant}
