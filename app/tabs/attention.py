"""Attention tab: saliency per layer (S_v, S_t, S_o), the embedding token's attention over the image,
and the late-fusion gate's LLM share, per note and over the dataset."""
from __future__ import annotations

import random

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.backend import Backend, message
from app.render import esc, mark, md, warning_toast
from app.tabs.common import _default_selection, note_choices
from core.analysis.attention import image_attention
from core.analysis.gate import gate_shares
from core.analysis.saliency import saliency_by_layer

PALETTE = ["#4f6bed", "#e4572e", "#17a398", "#f3a712", "#8e6c8a", "#29335c"]
_saliency_cache: dict[tuple, pd.DataFrame] = {}


def _mlrm_choices(backend: Backend, dataset) -> list[tuple[str, str]]:
    """Variants with a NoteEncoder inside: trained runs and the untrained MLRM (the frozen embedders and the
    plain LLM baseline have no connector, slot or gate to look into)."""
    analysable = {v.name for v in backend.variants(dataset) if v.has_attention}
    return [(label, name) for label, name in backend.variant_choices(dataset) if name in analysable]


def _pairs(backend: Backend, dataset, count: int, seed: int = 0):
    pairs = backend.store.pairs(dataset)
    random.Random(seed).shuffle(pairs)
    pairs = pairs[:count]
    notes = {n.note_id: n for n in backend.workbench.notes(dataset)}
    return [(notes[a], notes[b]) for a, b in pairs]


def saliency(backend: Backend, dataset, names, batches, progress=gr.Progress()):
    """(figure, markdown)."""
    names = [n for n in (names or []) if n]
    if not dataset or not names:
        return None, "Choose one or more variants."
    batch_pairs = 4
    pairs = _pairs(backend, dataset, int(batches) * batch_pairs)
    fig = make_subplots(rows=1, cols=3, subplot_titles=("S_v: final token → image tokens",
                                                        "S_t: final token → text tokens", "S_o: all other pairs"),
                        shared_xaxes=True)
    lines = []
    for i, name in enumerate(names):
        key = (str(backend.workspace.root), dataset, name, int(batches))
        if key not in _saliency_cache:
            progress(0, desc=f"{name}: loading the model")
            model = backend.workbench.encoder(name)

            def report(done, total, msg="", _name=name):
                progress((done, max(total, 1)), desc=f"{_name}: {msg or 'saliency'}")
            _saliency_cache[key] = saliency_by_layer(model, pairs, batch_pairs=batch_pairs, max_batches=int(batches),
                                                     progress=report)
        frame = _saliency_cache[key]
        colour = PALETTE[i % len(PALETTE)]
        for col, measure in enumerate(("S_v", "S_t", "S_o"), start=1):
            if measure not in frame:
                continue
            fig.add_trace(go.Scatter(x=frame["layer"], y=frame[measure], mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=col == 1, line=dict(color=colour),
                                     hovertemplate=f"{name}<br>layer %{{x}}<br>{measure} %{{y:.3g}}<extra></extra>"),
                          row=1, col=col)
        if "S_v" in frame and "S_t" in frame:
            ratio = float(frame["S_v"].mean() / max(frame["S_t"].mean(), 1e-12))
            lines.append(f"- **{md(name)}**: mean S_v / S_t = {ratio:.2f}")
    fig.update_layout(height=360, template="plotly_white", margin=dict(l=40, r=10, t=50, b=40),
                      legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title_text="layer")
    text = (f"Saliency = |Σ_heads attention × gradient of the contrastive loss| on {len(pairs)} related pairs "
            f"({int(batches)} batches of {batch_pairs}), averaged per layer. Higher S_v means the note vector "
            "leans more on the image; the paper's visual neglect shows as S_v falling behind after fine-tuning.\n\n"
            + "\n".join(lines))
    return fig, text


def heatmap(backend: Backend, dataset, name, note_id):
    """(overlay image, per-layer figure, markdown)."""
    if not (dataset and name and note_id):
        return None, None, "Choose a variant and a note."
    note = backend.workbench.note(dataset, note_id)
    if not note.image:
        return None, None, "This note has no image: there is nothing to attend to."
    out = image_attention(backend.workbench.encoder(name), note)
    fig = go.Figure()
    for key, label in (("per_layer", "n_m (final token)"), ("per_layer_visual", "n_v (before <IMG_EMB>)")):
        values = out.get(key)
        if values is not None and len(values):
            fig.add_trace(go.Scatter(y=list(values), mode="lines+markers", name=label))
    fig.update_layout(title="Share of the embedding token's attention on image tokens, per layer", height=300,
                      template="plotly_white", margin=dict(l=40, r=10, t=50, b=40), xaxis_title="layer",
                      yaxis_title="attention share", legend=dict(orientation="h", y=-0.3))
    return (out.get("overlay"), fig,
            f"**{md(note.title)}** under **{md(name)}**: the heat map is the final token's attention over the "
            "image tokens (averaged over heads and layers), laid over the image.")


def gates(backend: Backend, dataset, name, note_id, sample, progress=gr.Progress()):
    """(histogram figure, markdown)."""
    if not (dataset and name):
        return None, "Choose a variant with late fusion."
    row = backend.variant_row(dataset, name)
    if not row.late_fusion:
        return None, (f"**{md(name)}** has no late-fusion gate (variant `{esc(row.variant)}`): choose "
                      "`late`, `basic+late` or `micl+late`.")
    notes = backend.workbench.notes(dataset)
    random.Random(0).shuffle(notes)
    chosen = notes[: int(sample)]
    if note_id and note_id not in {n.note_id for n in chosen}:
        chosen.append(backend.workbench.note(dataset, note_id))
    progress(0, desc=f"{name}: gate over {len(chosen)} notes")
    frame = gate_shares(backend.workbench.encoder(name), chosen)
    fig = go.Figure()
    for has_image, label, colour in ((True, "with image", "#4f6bed"), (False, "no image (zero stand-in)", "#aaa")):
        part = frame[frame["has_image"] == has_image] if "has_image" in frame else frame
        if len(part):
            fig.add_trace(go.Histogram(x=part["llm_share"], name=f"{label} ({len(part)})", opacity=0.75,
                                       marker_color=colour, nbinsx=30))
    text = [f"LLM share of the gate z (mean over dimensions; 0.5 = the initial balance, 1 = all LLM, 0 = all image) "
            f"on {len(frame)} notes: mean **{frame['llm_share'].mean():.3f}**, "
            f"5–95% range {frame['llm_share'].quantile(0.05):.3f} – {frame['llm_share'].quantile(0.95):.3f}."]
    if note_id:
        mine = frame[frame["note_id"] == note_id]
        if len(mine):
            value = float(mine["llm_share"].iloc[0])
            fig.add_vline(x=value, line_color="#e4572e", line_width=3, annotation_text="this note")
            text.append(f"Selected note: **{value:.3f}**"
                        + (f" (n_v gate {float(mine['llm_share_visual'].iloc[0]):.3f})"
                           if "llm_share_visual" in mine and pd.notna(mine["llm_share_visual"].iloc[0]) else ""))
    fig.update_layout(barmode="overlay", height=300, template="plotly_white", xaxis_title="LLM share",
                      yaxis_title="notes", margin=dict(l=40, r=10, t=30, b=40), legend=dict(orientation="h", y=-0.3))
    return fig, "  \n".join(text)


def build(backend: Backend, dataset: gr.Dropdown):
    gr.Markdown("Where does the note vector look? Needs variants with a NoteEncoder inside (trained runs or `zs-mlrm`, the untrained one).",
                elem_classes=["wb-intro"])
    with gr.Accordion("Saliency per layer (S_v, S_t, S_o)", open=True):
        with gr.Row():
            sal_names = gr.Dropdown(label="Variants", choices=[], allow_custom_value=True, multiselect=True, scale=4, elem_id="attn-variants")
            batches = gr.Slider(1, 16, value=2, step=1, label="Batches of 4 pairs", scale=2)
            sal_btn = gr.Button("Compute saliency", variant="primary", scale=1, elem_id="saliency-btn")
        sal_plot = gr.Plot(show_label=False, elem_id="attn-saliency")
        sal_text = gr.Markdown()
    with gr.Accordion("Attention over the image, and the late-fusion gate", open=True):
        with gr.Row():
            variant = gr.Dropdown(label="Variant", choices=[], allow_custom_value=True, scale=2, elem_id="attn-variant")
            note = gr.Dropdown(label="Note", choices=[], allow_custom_value=True, scale=3, elem_id="attn-note")
            sample = gr.Slider(20, 600, value=120, step=20, label="Notes for the gate distribution", scale=2)
        with gr.Row():
            heat_btn = gr.Button("Show attention heat map", elem_id="heat-btn")
            gate_btn = gr.Button("Show gate shares", elem_id="gate-btn")
        with gr.Row():
            overlay = gr.Image(label="Final token's attention over the image", height=280, interactive=False,
                               elem_id="attn-overlay")
            layer_plot = gr.Plot(show_label=False)
        heat_text = gr.Markdown(elem_id="attn-heat-text")
        gate_plot = gr.Plot(show_label=False, elem_id="attn-gates")
        gate_text = gr.Markdown()

    def guarded(fn, n_out):
        def run(*args, progress=gr.Progress()):
            try:
                return fn(backend, *args, progress=progress) if fn is not heatmap else fn(backend, *args)
            except Exception as error:
                warning_toast(message(error)[:200])
                return (*([None] * (n_out - 1)), f"{mark('error')} {md(message(error))}")
        return run

    sal_btn.click(guarded(saliency, 2), [dataset, sal_names, batches], [sal_plot, sal_text], api_name="saliency")
    heat_btn.click(guarded(heatmap, 3), [dataset, variant, note], [overlay, layer_plot, heat_text],
                   api_name="attention_map")
    gate_btn.click(guarded(gates, 2), [dataset, variant, note, sample], [gate_plot, gate_text], api_name="gate_shares")

    def refresh(ds, current_names, current_variant, current_note):
        choices = _mlrm_choices(backend, ds)
        names = [v for _, v in choices]
        variant_of = {row.name: row.variant or row.name for row in backend.variants(ds)}
        kept = [n for n in (current_names or []) if n in names] or _default_selection(names, 2, variant_of)
        gated = [n for n in names if "late" in variant_of.get(n, n)]  # the gate view needs late fusion
        value = current_variant if current_variant in names else ((gated or names or [None])[0])
        try:
            notes = [c for c in note_choices(backend, ds)]
            with_image = {n.note_id for n in backend.workbench.notes(ds) if n.image} if ds else set()
            notes = [c for c in notes if c[1] in with_image] or notes
        except Exception as error:
            message(error)  # logged; the picker stays empty and the buttons say what is missing
            notes = []
        ids = [v for _, v in notes]
        note_value = current_note if current_note in ids else (ids[0] if ids else None)
        return (gr.update(choices=choices, value=kept), gr.update(choices=choices, value=value),
                gr.update(choices=notes, value=note_value))

    return {"refresh": (refresh, [dataset, sal_names, variant, note], [sal_names, variant, note])}
