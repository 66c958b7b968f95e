"""Search tab: one query (a stored note or one composed here) -> its nearest notes under one variant."""
from __future__ import annotations

import gradio as gr

from app.backend import Backend, describe, message
from app.render import badge, grid, md, note_card, notice, query_card, warning_toast
from app.tabs.common import MODALITIES, compose_note, neighbours, refresh_notes, refresh_variants, wire_note_search

FROM_DATASET, COMPOSE = "A note from the dataset", "Compose a note"


def search(backend: Backend, dataset, source, note_id, title, content, topics, image, variant, modality, k):
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
    try:
        rows = neighbours(backend, dataset, variant, note_id=note_id, query=None if note_id else query, k=k,
                          modality=modality)
    except Exception as error:
        return query_card(query), notice(message(error), "error"), ""
    related = backend.related(dataset).get(note_id, set()) if note_id else set()
    cards = []
    same_category = 0
    for hit in rows:
        note, score, rank = hit.note, hit.score, hit.rank
        badges = []
        if note.note_id in related:
            badges.append(badge("related ✓", "related"))
        if query.category and note.category == query.category:
            same_category += 1
            badges.append(badge("same category", "samecat"))
        cards.append(note_card(note, rank=rank, score=score, badges=badges,
                               extra_class="is-related" if note.note_id in related else ""))
    found = sum(1 for hit in rows if hit.note_id in related)
    scores = [hit.score for hit in rows]
    lines = [f"**{md(variant)}** ({md(describe(variant, backend.variant_row(dataset, variant)))}), "
             f"modality **{md(dict((v, l) for l, v in MODALITIES).get(modality, modality))}**, top {len(rows)}."]
    if note_id:
        lines.append(f"Known related notes found: **{found} of {len(related)}** in the top {len(rows)}"
                     + (" (this note has no recorded pair)." if not related else "."))
    if query.category:
        lines.append(f"Same category as the query: {same_category} of {len(rows)}.")
    if scores:
        ties = len(scores) - len(set(round(s, 5) for s in scores))
        lines.append(f"Scores {min(scores):.3f} – {max(scores):.3f}"
                     + (f"; {ties} tied scores (ranks among ties are arbitrary)." if ties else "."))
    results = grid(cards) if cards else notice("No neighbours returned.", "warn")
    return query_card(query, "Query" if note_id else "Composed query"), results, "  \n".join(lines)


def build(backend: Backend, dataset: gr.Dropdown):
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
                                elem_id="search-modality")
            k = gr.Slider(1, 50, value=12, step=1, label="Neighbours (k)")
            run = gr.Button("Search", variant="primary", elem_id="search-btn")
        with gr.Column(scale=3):
            query_html = gr.HTML(elem_id="search-query")
            summary = gr.Markdown(elem_id="search-summary")
            results = gr.HTML(elem_id="search-results")

    source.change(lambda s: (gr.update(visible=s == FROM_DATASET), gr.update(visible=s == COMPOSE)),
                  [source], [note, compose_box], api_name=False)

    def on_search(ds, s, n, t, c, tp, im, v, m, kk):
        try:
            return search(backend, ds, s, n, t, c, tp, im, v, m, kk)
        except Exception as error:
            return "", notice(message(error), "error"), ""

    inputs = [dataset, source, note, title, content, topics, image, variant, modality, k]
    run.click(on_search, inputs, [query_html, results, summary], api_name="search")
    # Switching variant or modality re-runs the same query: the point is to see what changes.
    for trigger in (variant.input, modality.input, note.input):
        trigger(on_search, inputs, [query_html, results, summary], api_name=False)
    variant.change(lambda ds, v: f"{describe(v, backend.variant_row(ds, v))}" if v else "",
                   [dataset, variant], variant_info, api_name=False)

    def refresh(ds, current_note, current_variant):
        return refresh_notes(backend, ds, current_note), refresh_variants(backend, ds, current_variant)

    return {"refresh": (refresh, [dataset, note, variant], [note, variant]), "note": note, "variant": variant}
