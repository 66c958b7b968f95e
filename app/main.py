"""The workbench page: a header (dataset, what is available) and one tab per job a researcher does."""
from __future__ import annotations

import gradio as gr

from app.backend import SHIPPED_CHECKPOINTS, Backend
from app.render import mark, md
from app.tabs import attention, compare, data, explore, finetune, runs, search
from app.tabs import paper
from core.workspace import REPO_ROOT

CSS_PATH = REPO_ROOT / "assets" / "workbench.css"
TITLE = "NoteLLM-2 workbench"
# The page scripts: this one (Search: a clicked result card searches from its note) and assets/selections.js
# (Explore's map clicks, linked hover and box/lasso selections; Search's related / not related marks).
SELECTIONS_JS_PATH = REPO_ROOT / "assets" / "selections.js"
JS = """
() => {
  // Search: clicking a result card (or Enter on it) searches from its note. The id goes into a hidden
  // textbox with a click count, so clicking the same card again is still a change the server hears.
  let searchClicks = 0;
  const searchFrom = (card) => {
    const box = document.querySelector('#search-click textarea, #search-click input');
    const id = card.getAttribute('data-note-id');
    if (!id || !box) return;
    searchClicks += 1;
    box.value = id + '\\n' + searchClicks;
    box.dispatchEvent(new Event('input', { bubbles: true }));
    const query = document.getElementById('search-query');
    if (query) query.scrollIntoView({ block: 'nearest' });
  };
  const resultCard = (event) => event.target && event.target.closest
    && event.target.closest('#search-results .wb-card.wb-clickable');
  document.addEventListener('click', (event) => {
    const card = resultCard(event);
    if (card) searchFrom(card);
  });
  document.addEventListener('keydown', (event) => {
    const card = (event.key === 'Enter' || event.key === ' ') && resultCard(event);
    if (card) { event.preventDefault(); searchFrom(card); }
  });
}
"""


def banner(backend: Backend, dataset) -> str:
    s = backend.startup
    parts = []
    if s.state in ("pending", "running"):
        parts.append(f"{mark('info')} Starting up: {md(s.message)}")
    elif s.state == "failed":
        parts.append(f"{mark('error')} Start-up problem: {md(s.message)}")
    variants = backend.variants(dataset) if dataset else []
    runs = [v for v in variants if not v.zero_shot]
    zero = [v for v in variants if v.zero_shot]
    if not runs:
        shipped = "no demo checkpoints are shipped yet" if not backend.demo_checkpoints() else \
            "the shipped demo checkpoints are not installed in this workspace"
        parts.append(f"{mark('info')} No trained variant for **{md(dataset)}** ({shipped}, {SHIPPED_CHECKPOINTS.relative_to(REPO_ROOT)}/). "
                     f"The {len(zero)} zero-shot baselines work now; train a variant in **Fine-tune** "
                     "(preset *tiny*: seconds, *cpu*: minutes).")
    else:
        parts.append(f"{len(runs)} trained variant(s) and {len(zero)} zero-shot baselines on **{md(dataset)}**.")
    text = " · ".join(parts)
    if dataset and dataset == s.sample:
        lines = warmth_lines(s)
        if lines:
            text += "  \n" + "  \n".join(lines)
    return text


def startup_tick(backend: Backend, current):
    """(dataset picker update, banner, timer) for one poll of the start-up. Once it is ready the picker is left
    alone while the baselines still encode (minutes): choices sent every second would close it under the
    user's pointer. The timer stops when nothing is left to follow."""
    s = backend.startup
    names = backend.dataset_names()
    value = current if current in names else backend.default_dataset()
    picker = gr.update() if s.state in ("ready", "failed") and current in names else \
        gr.update(choices=names, value=value)
    return picker, banner(backend, value), gr.Timer(active=not s.settled)


def warmth_lines(startup) -> list[str]:
    """One line per variant start-up makes ready on the sample: "warm", or "encoding n of N" (notes times
    modalities) while its vectors are read or encoded, so nobody wonders why a first search would wait."""
    lines = []
    for w in list(startup.warmth.values()):
        if w.state == "warm":
            lines.append(f"**{md(w.name)}**: warm")
        elif w.state == "failed":
            lines.append(f"**{md(w.name)}**: not warmed ({md(w.error)}); it encodes on first use")
        else:
            lines.append(f"**{md(w.name)}**: encoding {w.done} of {w.total or '?'}")
    return lines


def build_app(backend: Backend) -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        with gr.Row(elem_classes=["wb-header"]):
            gr.Markdown(f"## {TITLE}\nNeighbour search, ablations and fine-tuning of multimodal note "
                        "embeddings ([NoteLLM-2](https://arxiv.org/abs/2405.16789)).", elem_classes=["wb-brand"])
            dataset = gr.Dropdown(label="Dataset", choices=[], allow_custom_value=True, scale=0, min_width=220, elem_id="dataset")
        status = gr.Markdown(elem_id="wb-banner", elem_classes=["wb-banner"])
        startup_timer = gr.Timer(1.0, active=True)
        # Set to a new value when the set of runs changed (a job ended; a run renamed or deleted in Runs):
        # the banner and every tab's variant lists refresh then, not only on a reload. Hidden but in the page
        # (visible="hidden"): a component that is not rendered never reports a change.
        runs_changed = gr.Textbox(visible="hidden", elem_id="wb-runs-changed")
        tabs = {}
        with gr.Tabs(elem_id="wb-tabs") as tab_set:
            with gr.Tab("Search", id="search", elem_id="tab-search") as t:
                tabs["search"] = (t, search.build(backend, dataset))
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as t:
                tabs["compare"] = (t, compare.build(backend, dataset))
            with gr.Tab("Paper", id="paper", elem_id="tab-paper") as t:
                tabs["paper"] = (t, paper.build(backend, dataset))
            with gr.Tab("Explore", id="explore", elem_id="tab-explore") as t:
                tabs["explore"] = (t, explore.build(backend, dataset))
            with gr.Tab("Attention", id="attention", elem_id="tab-attention") as t:
                tabs["attention"] = (t, attention.build(backend, dataset))
            with gr.Tab("Fine-tune", id="finetune", elem_id="tab-finetune") as t:
                tabs["finetune"] = (t, finetune.build(backend, dataset, runs_changed))
            with gr.Tab("Runs", id="runs", elem_id="tab-runs") as t:
                tabs["runs"] = (t, runs.build(backend, dataset, runs_changed))
            with gr.Tab("Data", id="data", elem_id="tab-data") as t:
                tabs["data"] = (t, data.build(backend, dataset))

        # The Paper tab opens a query in Compare and the aligned maps in Explore.
        paper.link(backend, dataset, tab_set, tabs["paper"], tabs["compare"][1], tabs["explore"][1])

        # Every tab refreshes its note and variant lists when shown and when the dataset changes, so a run
        # that finished a minute ago is there without a reload.
        for name, (tab, handles) in tabs.items():
            if "refresh" in handles:
                fn, inputs, outputs = handles["refresh"]
                tab.select(fn, inputs, outputs, api_name=False, show_progress="hidden")
                dataset.change(fn, inputs, outputs, api_name=False, show_progress="hidden")
        dataset.change(lambda ds: banner(backend, ds), dataset, status, api_name=False, show_progress="hidden")
        changed = runs_changed.change(lambda ds: banner(backend, ds), dataset, status, api_name=False,
                                      show_progress="hidden")
        for name, (tab, handles) in tabs.items():
            if "refresh" in handles:
                fn, inputs, outputs = handles["refresh"]
                changed = changed.then(fn, inputs, outputs, api_name=False, show_progress="hidden")

        def on_load(current):
            names = backend.dataset_names()
            value = current if current in names else backend.default_dataset()
            return gr.update(choices=names, value=value), banner(backend, value)

        load = demo.load(on_load, [dataset], [dataset, status], api_name=False)
        for name, (tab, handles) in tabs.items():
            if "refresh" in handles:
                fn, inputs, outputs = handles["refresh"]
                load = load.then(fn, inputs, outputs, api_name=False, show_progress="hidden")
            for key in ("load", "init"):
                if key in handles:
                    fn, inputs, outputs = handles[key]
                    load = load.then(fn, inputs, outputs, api_name=False, show_progress="hidden")

        # Until the background start-up is done (the sample, the demo runs, then the variants' vectors), poll
        # it; then refresh once and stop.
        def on_startup_tick(current):
            return startup_tick(backend, current)

        startup_timer.tick(on_startup_tick, [dataset], [dataset, status, startup_timer], api_name=False,
                           show_progress="hidden")
        demo.workbench_tabs = tab_set
    return demo


def launch_kwargs() -> dict:
    """What Gradio 6 takes at launch rather than in Blocks(): theme, CSS and the page script."""
    scripts = [JS, SELECTIONS_JS_PATH.read_text(encoding="utf-8")]
    page_script = "() => {\n" + "".join(f"({script.strip()})();\n" for script in scripts) + "}"
    return {"css_paths": [CSS_PATH] if CSS_PATH.is_file() else None, "js": page_script,
            # System fonts only: there may be no network to fetch web fonts from.
            "theme": gr.themes.Soft(primary_hue="indigo", neutral_hue="slate",
                                    font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])}
