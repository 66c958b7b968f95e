"""Explore tab: UMAP maps of a dataset under one or two variants (aligned), coloured by category or by
whether a note's related note is among its neighbours; selecting a note shows its neighbours. A box or lasso
on a map adds its notes to the dataset's working set (app/tabs/working_set.py); the page script
(assets/selections.js) relays clicks and selections and links hovering across two maps."""
from __future__ import annotations

from urllib.parse import quote

import numpy as np
import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.backend import Backend, message
from app.render import esc, grid, mark, md, note_card, notice, related_badge, warning_toast
from app.tabs import working_set
from app.tabs.common import MODALITIES, neighbours, refresh_notes, refresh_variants, wire_note_search
from core.analysis.projection import aligned_projections, project

COLOURS = ["#4f6bed", "#e4572e", "#17a398", "#f3a712", "#8e6c8a", "#29335c", "#c2185b", "#7cb518", "#0081a7",
           "#f07167", "#6d597a", "#b56576", "#355070", "#e09f3e", "#9e2a2b", "#335c67", "#540b0e", "#2a9d8f",
           "#e76f51", "#264653", "#8ab17d", "#bc6c25", "#606c38", "#9d4edd"]
HIT_K = 10


def target_hits(ids: list[str], vectors: np.ndarray, related: dict[str, set[str]], k: int = HIT_K) -> list[str]:
    """'hit' when a known related note is in the note's top k by inner product, 'miss' when not, 'no pair'.

    Display-only arithmetic on the vectors core returned: a colour per point, not a metric."""
    vectors = np.asarray(vectors, dtype=np.float32)
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    k = min(k, max(len(ids) - 1, 1))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if len(ids) > 1 else np.zeros((len(ids), 0), int)
    out = []
    for i, note_id in enumerate(ids):
        mine = related.get(note_id)
        if not mine:
            out.append("no pair")
        else:
            out.append("hit" if any(ids[j] in mine for j in top[i]) else "miss")
    return out


def image_url(path) -> str:
    """Where the page fetches a note's image on hover: Gradio's file route, which launch() opens for the
    workspace's image folder only. Relative, so it also works under a proxy's sub-path."""
    return f"gradio_api/file={quote(str(path))}" if path else ""


def compute_maps(backend: Backend, dataset, names, modality, progress=gr.Progress()):
    """State for the figure: ids, titles, categories, coords per variant, hits per variant."""
    names = [n for n in (names or []) if n][:2]
    if not dataset or not names:
        raise gr.Error("Choose one or two variants.")
    related = backend.related(dataset)
    notes = {n.note_id: n for n in backend.workbench.notes(dataset)}
    vectors, ids = {}, None
    for i, name in enumerate(names):
        def report(done, total, msg="", _name=name):
            progress((done, max(total, 1)), desc=f"{_name}: {msg or 'encoding'}")
        progress(0, desc=f"{name}: vectors (cached after the first time)")
        got_ids, vecs = backend.workbench.dataset_vectors(name, dataset, modality=modality, progress=report)
        if ids is None:
            ids = got_ids
        elif got_ids != ids:  # align to the first variant's order
            order = {x: j for j, x in enumerate(got_ids)}
            vecs = np.asarray(vecs)[[order[x] for x in ids]]
        vectors[name] = np.asarray(vecs, dtype=np.float32)
    cache_dir = backend.workbench.map_cache_dir(dataset)
    progress(0.8, desc="UMAP projection (cached; the first run compiles numba, ~10 s)")
    if len(names) == 2:
        a, b = aligned_projections(vectors[names[0]], vectors[names[1]], cache_dir,
                                   f"{dataset}-{names[0]}-{names[1]}-{modality}")
        coords = {names[0]: np.asarray(a), names[1]: np.asarray(b)}
    else:
        coords = {names[0]: np.asarray(project(vectors[names[0]], cache_dir, f"{dataset}-{names[0]}-{modality}", 0))}
    return {"dataset": dataset, "names": names, "modality": modality, "ids": ids,
            "titles": [notes[i].title if i in notes else i for i in ids],
            "categories": [notes[i].category if i in notes else "" for i in ids],
            "images": [image_url(notes[i].image) if i in notes else "" for i in ids],
            "coords": {n: c.tolist() for n, c in coords.items()},
            "hits": {n: target_hits(ids, vectors[n], related) for n in names}}


MAX_POINTS_SHOWN = 200_000


def shown_points(count: int) -> np.ndarray:
    """The points drawn: all of them up to MAX_POINTS_SHOWN, past it a seeded sample of that many (WebGL draws
    a million, but the page would first download a million hover texts). The selected note and its
    neighbours are drawn on top whether sampled or not."""
    if count <= MAX_POINTS_SHOWN:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, MAX_POINTS_SHOWN, replace=False))


def figure(state: dict, colour_by: str, selected: str | None, neighbour_ids: dict[str, list[str]] | None = None):
    names = state["names"]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[
        f"{n} · {_hit_rate(state['hits'][n])}" for n in names], horizontal_spacing=0.04)
    ids, titles, cats = state["ids"], state["titles"], state["categories"]
    images = state["images"]
    shown = shown_points(len(ids))
    for col, name in enumerate(names, start=1):
        xy = np.asarray(state["coords"][name])
        groups = state["hits"][name] if colour_by == "target hit" else cats
        levels = (["hit", "miss", "no pair"] if colour_by == "target hit"
                  else sorted(set(groups), key=lambda c: (-groups.count(c), c or "")))
        members: dict = {}
        for i in shown:
            members.setdefault(groups[i], []).append(i)
        for j, level in enumerate(levels):
            idx = members.get(level, [])
            if not idx:
                continue
            colour = {"hit": "#17a398", "miss": "#e4572e", "no pair": "#c8c8c8"}.get(level) if colour_by == "target hit" \
                else COLOURS[j % len(COLOURS)]
            fig.add_trace(go.Scattergl(
                x=xy[idx, 0], y=xy[idx, 1], mode="markers", name=level or "(none)", legendgroup=level,
                showlegend=col == 1, marker=dict(size=6, color=colour, opacity=0.8),
                # [note id, image URL]: the page script selects by the first and shows the second on hover.
                customdata=[[ids[i], images[i]] for i in idx],
                text=[f"<b>{esc(titles[i])}</b><br>{esc(cats[i])}<br>{esc(state['hits'][name][i])} @ {HIT_K}"
                      for i in idx],
                hovertemplate="%{text}<extra></extra>"), row=1, col=col)
        if selected and selected in ids:
            i = ids.index(selected)
            near = [ids.index(x) for x in (neighbour_ids or {}).get(name, []) if x in ids]
            if near:
                fig.add_trace(go.Scatter(x=xy[near, 0], y=xy[near, 1], mode="markers", name="neighbours",
                                         legendgroup="neighbours", showlegend=col == 1, hoverinfo="skip",
                                         marker=dict(size=12, color="rgba(0,0,0,0)",
                                                     line=dict(color="#111", width=2))), row=1, col=col)
            fig.add_trace(go.Scatter(x=[xy[i, 0]], y=[xy[i, 1]], mode="markers", name="selected",
                                     legendgroup="selected", showlegend=col == 1, hoverinfo="skip",
                                     marker=dict(size=18, symbol="star", color="#ffd000",
                                                 line=dict(color="#111", width=1.5))), row=1, col=col)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    # uirevision: a new selection redraws the figure, and the user's zoom and drag tool (box, lasso) stay.
    fig.update_layout(height=560, template="plotly_white", margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(font=dict(size=10), itemsizing="constant"), clickmode="event",
                      uirevision=f"{state['dataset']}|{'|'.join(names)}|{state['modality']}")
    return fig


def _hit_rate(hits: list[str]) -> str:
    paired = [h for h in hits if h != "no pair"]
    if not paired:
        return "no pairs"
    rate = sum(h == "hit" for h in paired) / len(paired)
    se = (rate * (1 - rate) / len(paired)) ** 0.5
    return f"related in top {HIT_K}: {100 * rate:.0f}% ± {196 * se:.0f} of {len(paired)}"


def select(backend: Backend, state: dict | None, colour_by, note_id, k=8):
    """(figure, neighbour cards html) for a selected note."""
    if not state:
        return None, notice("Compute a map first.", "warn")
    if not note_id:
        return figure(state, colour_by, None), ""
    dataset = state["dataset"]
    query = backend.workbench.note(dataset, note_id)
    related = backend.related(dataset).get(note_id, set())
    neighbour_ids, blocks = {}, []
    for name in state["names"]:
        try:
            rows = neighbours(backend, dataset, name, note_id=note_id, k=k, modality=state["modality"])
        except Exception as error:
            blocks.append(f"<h4>{esc(name)}</h4>" + notice(message(error), "error"))
            continue
        neighbour_ids[name] = [hit.note_id for hit in rows]
        cards = [note_card(hit.note, rank=hit.rank, score=hit.score, size=72, extra_class="compact",
                           badges=[related_badge()] if hit.note_id in related else [])
                 for hit in rows]
        blocks.append(f'<div class="wb-col"><div class="wb-colhead"><b>{esc(name)}</b></div>{grid(cards, "wb-grid small")}</div>')
    head = (f'<div class="wb-small">Neighbours of <b>{esc(query.title)}</b> ({esc(query.category)}); '
            f'{len(related)} known related.</div>')
    html = head + f'<div class="wb-compare" style="--cols:{len(blocks)}">{"".join(blocks)}</div>'
    return figure(state, colour_by, note_id, neighbour_ids), html


def build(backend: Backend, dataset: gr.Dropdown):
    state = gr.State(None)
    with gr.Row():
        names = gr.Dropdown(label="One or two variants (two: maps aligned to each other)", choices=[], allow_custom_value=True,
                            multiselect=True, max_choices=2, scale=4, elem_id="explore-variants")
        modality = gr.Radio(MODALITIES, value="both", label="Modality", scale=3)
        colour_by = gr.Radio(["category", "target hit"], value="category", label="Colour by", scale=2)
        run = gr.Button("Compute map", variant="primary", scale=1, elem_id="explore-btn")
    status = gr.Markdown("Hover a point for its title and image; click it (or pick it below) to see its neighbours. "
                         "Box select or lasso (toolbar above the map) adds the notes inside to the working set.",
                         elem_classes=["wb-small"])
    plot = gr.Plot(show_label=False, elem_id="explore-map")
    note = gr.Dropdown(label="Selected note", choices=[], allow_custom_value=True, elem_id="explore-note")
    wire_note_search(backend, dataset, note)
    # Written by the page script (assets/selections.js) as JSON with a counter, so a repeat is still a change:
    # a clicked point {"id"}, a box or lasso selection {"ids"}.
    clicked = gr.Textbox(elem_id="explore-click", elem_classes=["wb-hidden"], show_label=False, container=False)
    selection = gr.Textbox(elem_id="explore-selection", elem_classes=["wb-hidden"], show_label=False, container=False)
    near = gr.HTML(elem_id="explore-neighbours")
    panel = working_set.build(backend, dataset, "explore")

    def on_run(ds, v, m, c, progress=gr.Progress()):
        try:
            st = compute_maps(backend, ds, v, m, progress)
        except gr.Error:
            raise
        except Exception as error:
            warning_toast(message(error)[:200])
            return None, None, f"{mark('error')} {md(message(error))}"
        return st, figure(st, c, None), (f"{len(st['ids'])} notes · modality {md(m)}. *Target hit* = a known related note "
                                         f"is among the note's {HIT_K} nearest; the rate over titles is ± a 95% "
                                         "interval. Click a point (or pick it below) for its neighbours; box select "
                                         "or lasso (toolbar above the map) adds notes to the working set.")

    run.click(on_run, [dataset, names, modality, colour_by], [state, plot, status], api_name="explore_map")

    def on_select(st, c, n):
        try:
            return select(backend, st, c, n)
        except Exception as error:
            return gr.update(), notice(message(error), "error")

    colour_by.change(on_select, [state, colour_by, note], [plot, near], api_name=False)
    note.input(on_select, [state, colour_by, note], [plot, near], api_name="explore_select")
    def on_click(st, value, current):
        """The note id of a clicked point, if it is one of the map's notes (the box is reachable by any client)."""
        try:
            payload = working_set.read_payload(value) or {}
        except Exception as error:
            message(error)
            return gr.update()
        note_id = payload.get("id")
        if not st or not isinstance(note_id, str) or note_id not in set(st["ids"]):
            return gr.update()
        return refresh_notes(backend, st["dataset"], note_id, first_by_default=False)

    # .change, not .input: Gradio's textbox reports "input" on key presses only, and the page sets the value.
    clicked.change(on_click, [state, clicked, note], [note], api_name=False, show_progress="hidden").then(
        on_select, [state, colour_by, note], [plot, near], api_name=False)

    def on_selection(st, value):
        """Notes inside a box or lasso join the working set of the map's dataset."""
        try:
            payload = working_set.read_payload(value)
            if not payload:
                return gr.update(), gr.update()
            if not st:
                return gr.update(), f"{mark('warn')} Compute a map first."
            ids = payload.get("ids")
            before = len(backend.workbench.working_set(st["dataset"]).notes)
            after = backend.workbench.working_set_add(st["dataset"], ids)
        except Exception as error:
            return gr.update(), f"{mark('warn')} {md(message(error))}"
        added = len(after.notes) - before
        return (working_set.summary_html(backend, st["dataset"]),
                f"{mark('ok')} {len(ids)} notes selected, {added} new in the working set of **{md(st['dataset'])}**.")

    selection.change(on_selection, [state, selection], [panel["summary"], panel["status"]], api_name=False,
                     show_progress="hidden", trigger_mode="multiple", concurrency_limit=1,
                     concurrency_id="working-set")

    panel_refresh, _, panel_outputs = panel["refresh"]

    def refresh(ds, current, current_note):
        return (refresh_variants(backend, ds, current, multiselect=True, default_count=1),
                refresh_notes(backend, ds, current_note, first_by_default=False), *panel_refresh(ds))

    # "controls" and "compute" let another tab open a map here (the Paper tab's aligned image-only maps).
    return {"refresh": (refresh, [dataset, names, note], [names, note, *panel_outputs]),
            "controls": {"names": names, "modality": modality, "colour_by": colour_by},
            "compute": (on_run, [dataset, names, modality, colour_by], [state, plot, status])}
