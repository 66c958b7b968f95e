"""Paper tab: NoteLLM-2's story on one screen, judged by paired tests.

The claims as the reproduction judged them for the dataset in use (when it has been reproduced), the live
paired comparison of two variants on the same test queries (default `basic` against `micl+late`), the queries
where one beats the other (a row opens the query in Compare) and one button to the aligned image-only maps of
`basic` and NoteLLM-2 in Explore. Ranks, recalls, intervals and p-values all come from core
(`Workbench.paired_comparison`, `Workbench.paper_claims`); this module only chooses and renders."""
from __future__ import annotations

import gradio as gr

from app.backend import Backend, message
from app.render import esc, md, notice
from app.tabs.common import MODALITIES, refresh_notes, session_of
from core.errors import WorkbenchError

ROWS_PER_SIDE = 40
NOTELLM2, BASIC = "micl+late", "basic"
# Which variant stands in when the paper's own is not trained here: B (the remedy) and A (the baseline it
# improves on), in order of preference; zero-shot baselines last.
B_PREFERENCE = ("micl+late", "late", "micl", "basic+late")
A_PREFERENCE = ("basic", "text", "basic+late")
ZERO_SHOT_A, ZERO_SHOT_B = ("zs-concat", "zs-text", "zs-image"), ("zs-mlrm", "zs-llm")

TABLE_CSS = """
table { border-collapse: collapse; width: 100%; font-size: 0.9em; margin: 4px 0 12px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--border-color-primary); text-align: left; }
th { font-weight: 600; color: var(--body-text-color-subdued); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.wb-go { cursor: pointer; }
tr.wb-go:hover td { background: var(--background-fill-secondary); }
.wb-verdict { font-weight: 600; }
.wb-verdict.holds, .wb-verdict.higher { color: #0b6b61; }
.wb-verdict.lower, .wb-verdict.does-not-hold { color: #9b2d15; }
h4 { margin: 10px 0 2px; }
"""
# A click on a row of the per-query table sends the query's note id to the server.
ROW_CLICK_JS = ("element.addEventListener('click', (event) => {"
                " const row = event.target.closest('tr[data-note-id]');"
                " if (row) trigger('click', {note_id: row.dataset.noteId}); });")


# ------------------------------------------------------------------------------------------ choosing
def _runs_by_variant(backend: Backend, dataset) -> dict[str, str]:
    """architecture -> the newest finished run of it on this dataset (core lists runs newest first)."""
    out: dict[str, str] = {}
    for row in backend.variants(dataset):
        if not row.zero_shot:
            out.setdefault(row.variant, row.name)
    return out


def default_pair(backend: Backend, dataset) -> tuple[str | None, str | None, str]:
    """(A, B, a plain-text sentence saying what they are): `basic` against `micl+late` when both are trained here,
    otherwise the closest pair there is, and the sentence says which stand-in was used."""
    runs = _runs_by_variant(backend, dataset)
    zero = [row.name for row in backend.variants(dataset) if row.zero_shot]
    if BASIC in runs and NOTELLM2 in runs:
        return runs[BASIC], runs[NOTELLM2], (f"A = basic (run {runs[BASIC]}), B = NoteLLM-2, micl+late (run "
                                             f"{runs[NOTELLM2]}): the paper's comparison.")
    b = next((runs[v] for v in B_PREFERENCE if v in runs), None) or next((z for z in ZERO_SHOT_B if z in zero), None)
    a = next((runs[v] for v in A_PREFERENCE if v in runs and runs[v] != b), None) or \
        next((z for z in ZERO_SHOT_A if z in zero), None)
    missing = [name for name in (BASIC, NOTELLM2) if name not in runs]
    return a, b, (f"No trained {' or '.join(missing)} on this dataset, so this is the closest pair there is: "
                  f"A = {a}, B = {b}. Train the missing variant(s) in Fine-tune for the paper's own comparison.")


# ------------------------------------------------------------------------------------------ rendering
def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def claims_html(claims) -> str:
    """The reproduction's claims with their paired verdicts, or the sentence saying why there are none."""
    head = f'<div class="wb-small">{esc(claims.note)}</div>'
    if not claims.judged:
        return (head + '<div class="wb-small">The comparison below is computed live in this workspace on the '
                "variants you choose, with the same paired test.</div>")
    parts = [head]
    for claim in claims.claims:
        outcome = claim.outcome.replace(" ", "-")
        parts.append(f'<h4>Claim {esc(claim.number)}: {esc(claim.statement)} · '
                     f'<span class="wb-verdict {esc(outcome)}">{esc(claim.outcome)}</span></h4>')
        rows = "".join(
            f"<tr><td>{esc(c.label)}</td><td>{esc(c.a[1])} − {esc(c.b[1])}</td><td class='num'>{c.queries}</td>"
            f"<td class='num'>{_points(c.difference)}</td>"
            f"<td class='num'>{_points(c.ci_low)} to {_points(c.ci_high)}</td><td class='num'>{_p(c.p_value)}</td>"
            f"<td class='num'>{_p(c.p_holm)}</td>"
            f"<td><span class='wb-verdict {esc(c.verdict.replace(' ', '-'))}'>{esc(c.verdict)}</span></td></tr>"
            for c in claim.comparisons)
        parts.append("<table><thead><tr><th>comparison (a − b)</th><th>modalities</th><th class='num'>queries</th>"
                     "<th class='num'>Δ Recall@10 (points)</th><th class='num'>95% CI</th><th class='num'>p</th>"
                     f"<th class='num'>Holm p</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>")
    return "".join(parts)


def summary_html(paired, dataset: str, choice_note: str = "") -> str:
    """What the paired comparison says, or, when the metric is trivial for this pool, the sentences why it
    says nothing (no figures then)."""
    a, b, k = esc(paired.a), esc(paired.b), paired.k
    lines = [f"<div><b>{b}</b> (B) against <b>{a}</b> (A) on <b>{esc(dataset)}</b>, modality "
             f"<b>{esc(paired.modality)}</b>: {paired.queries} test queries, each with one target among a pool of "
             f"{paired.pool} held-out notes (split seed {paired.split_seed}, {paired.test_fraction:.0%} held out); "
             f"chance Recall@{k} is {100 * paired.chance:.1f}%.</div>"]
    if paired.trivial:
        lines += [notice(reason, "warn") for reason in paired.trivial_reasons]
        lines.append(f'<div class="wb-small">Recall@{k} is therefore not shown as a result here; the ranks below '
                     "still show where each variant put each target.</div>")
    else:
        if paired.p_value < 0.05:
            verdict = "B is higher than A" if paired.difference > 0 else "B is lower than A"
            kind = "higher" if paired.difference > 0 else "lower"
        else:
            verdict, kind = "no difference shown", ""
        test = "exact McNemar test" if paired.test == "mcnemar-exact" else paired.test + " test"
        lines.append(
            f'<div class="wb-paired">Recall@{k}: A {100 * paired.recall_a:.1f}%, B {100 * paired.recall_b:.1f}%. '
            f"B − A = <b>{_points(paired.difference)} points</b> (paired bootstrap 95% CI {_points(paired.ci95[0])} "
            f"to {_points(paired.ci95[1])}), p {_p(paired.p_value)} ({esc(test)} on the same queries): "
            f'<span class="wb-verdict {kind}">{esc(verdict)}</span>.</div>')
        lines.append('<div class="wb-small">A single comparison, not adjusted for multiple tests (judged claims '
                     "are Holm-adjusted over the reproduction's whole family of tests).</div>")
    if choice_note:
        lines.append(f'<div class="wb-small">{esc(choice_note)}</div>')
    return "".join(lines)


def ranks_html(backend: Backend, dataset: str, paired, limit: int = ROWS_PER_SIDE) -> str:
    """Where does B beat A, and where A beats B: the queries whose target rank differs, biggest change first.
    Each row opens the query in Compare."""
    better = [r for r in paired.ranks if r.gain > 0]
    worse = sorted((r for r in paired.ranks if r.gain < 0), key=lambda r: (r.gain, r.rank_a, r.query))
    same = len(paired.ranks) - len(better) - len(worse)

    def title(note_id: str) -> str:
        try:
            return backend.workbench.note(dataset, note_id).title or "(untitled)"
        except WorkbenchError:
            return note_id

    def table(rows, heading: str) -> str:
        if not rows:
            return f"<h4>{esc(heading)}</h4><div class='wb-small'>No query.</div>"
        shown = rows[:limit]
        more = f" (the {limit} biggest of {len(rows)})" if len(rows) > limit else f" ({len(rows)})"
        body = "".join(
            f'<tr class="wb-go" data-note-id="{esc(r.query)}" title="Open this query in Compare">'
            f"<td>{esc(title(r.query))}</td><td>{esc(title(r.target))}</td><td class='num'>{r.rank_a}</td>"
            f"<td class='num'>{r.rank_b}</td><td class='num'>{r.gain:+d}</td></tr>" for r in shown)
        return (f"<h4>{esc(heading)}{esc(more)}</h4><table><thead><tr><th>query</th><th>target</th>"
                f"<th class='num'>rank under A ({esc(paired.a)})</th><th class='num'>rank under B ({esc(paired.b)})</th>"
                f"<th class='num'>places B gained</th></tr></thead><tbody>{body}</tbody></table>")

    return (f"<div class='wb-small'>Rank 1 = the target is the first neighbour. {same} of {len(paired.ranks)} "
            "queries rank their target the same under both. Click a row to open that query in Compare.</div>"
            + table(better, f"Where B ({paired.b}) ranks the target higher")
            + table(worse, f"Where A ({paired.a}) ranks the target higher"))


# ------------------------------------------------------------------------------------------ the tab
def compute(backend: Backend, dataset, a, b, modality):
    """(A update, B update, summary html, ranks html) for the variants on screen; empty or invalid choices
    fall back to the default pair."""
    if not dataset:
        return gr.update(), gr.update(), notice("Pick a dataset.", "warn"), ""
    names = [row.name for row in backend.variants(dataset)]
    default_a, default_b, choice_note = default_pair(backend, dataset)
    defaulted = not (a in names and b in names)
    if defaulted:
        a, b = default_a, default_b
    if not a or not b:
        return gr.update(value=a), gr.update(value=b), notice("No two variants to compare on this dataset.", "warn"), ""
    try:
        paired = backend.workbench.paired_comparison(dataset, a, b, modality or "both")
    except WorkbenchError as error:
        return gr.update(value=a), gr.update(value=b), notice(message(error), "warn"), ""
    note = choice_note if (a, b) == (default_a, default_b) else ""
    return (gr.update(value=a), gr.update(value=b), summary_html(paired, dataset, note),
            ranks_html(backend, dataset, paired))


def refresh(backend: Backend, dataset, a, b):
    """Heading, claims and the variant lists for the dataset in use (cheap: no evaluation)."""
    if not dataset:
        return "### Paper\nPick a dataset.", "", gr.update(choices=[]), gr.update(choices=[])
    choices = backend.variant_choices(dataset)
    names = [value for _, value in choices]
    default_a, default_b, _ = default_pair(backend, dataset)
    heading = (f"### The paper's claims on **{md(dataset)}**\nNoteLLM-2 says (1) `basic` neglects the image, (2) mICL "
               "and late fusion each improve on `basic`, (3) together (`micl+late`) they are best. Each is judged "
               "by a paired test over the same test queries.")
    try:
        claims = claims_html(backend.workbench.paper_claims(dataset))
    except Exception as error:
        claims = notice(message(error), "error")
    return (heading, claims, gr.update(choices=choices, value=a if a in names else default_a),
            gr.update(choices=choices, value=b if b in names else default_b))


def build(backend: Backend, dataset: gr.Dropdown):
    heading = gr.Markdown(elem_id="paper-head")
    claims = gr.HTML(elem_id="paper-claims", css_template=TABLE_CSS, js_on_load=None)
    gr.Markdown("### A paired comparison, live on this workspace")
    with gr.Row():
        a = gr.Dropdown(label="A (the baseline)", choices=[], allow_custom_value=True, scale=3, elem_id="paper-a")
        b = gr.Dropdown(label="B (the remedy)", choices=[], allow_custom_value=True, scale=3, elem_id="paper-b")
        modality = gr.Radio(MODALITIES, value="both", label="Modality", scale=3, elem_id="paper-modality")
        run = gr.Button("Compare A and B", variant="primary", scale=1, elem_id="paper-btn")
    summary = gr.HTML(elem_id="paper-summary", css_template=TABLE_CSS, js_on_load=None)
    with gr.Row():
        maps = gr.Button("Show the aligned image-only maps of basic and NoteLLM-2 in Explore", scale=1,
                         elem_id="paper-explore-btn")
        maps_note = gr.HTML(elem_id="paper-maps-note", js_on_load=None)
    ranks = gr.HTML(elem_id="paper-ranks", css_template=TABLE_CSS, js_on_load=ROW_CLICK_JS)

    def on_compute(ds, va, vb, m, progress=gr.Progress()):
        progress(0, desc="evaluating both variants on the test split (cached after the first time)")
        try:
            return compute(backend, ds, va, vb, m)
        except Exception as error:
            return gr.update(), gr.update(), notice(message(error), "error"), ""

    outputs = [a, b, summary, ranks]
    run.click(on_compute, [dataset, a, b, modality], outputs, api_name="paper_compare")

    def on_refresh(ds, va, vb):
        return refresh(backend, ds, va, vb)

    def on_show(ds, va, vb, m, progress=gr.Progress()):
        """The tab shown (or its dataset changed while shown): lists and claims, then the comparison, in one
        step so that nothing refreshed later can put another pair's lists beside this pair's result."""
        head, claim_html, update_a, update_b = on_refresh(ds, va, vb)
        va = va if va in [v for _, v in update_a.get("choices", [])] else update_a.get("value")
        vb = vb if vb in [v for _, v in update_b.get("choices", [])] else update_b.get("value")
        computed = on_compute(ds, va, vb, m, progress)
        return head, claim_html, {**update_a, **_value(computed[0])}, {**update_b, **_value(computed[1])}, *computed[2:]

    # No "refresh" handle: the generic one would run beside on_show when the tab is selected; link() wires
    # the tab's selection and the dataset's changes to on_show instead.
    return {"load": (on_refresh, [dataset, a, b], [heading, claims, a, b]),
            "show": (on_show, [dataset, a, b, modality], [heading, claims, a, b, summary, ranks]),
            "compute": (on_compute, [dataset, a, b, modality], outputs),
            "controls": {"a": a, "b": b, "modality": modality, "ranks": ranks, "maps": maps,
                         "maps_note": maps_note, "summary": summary}}


def _value(update) -> dict:
    return {"value": update["value"]} if isinstance(update, dict) and "value" in update else {}


def link(backend: Backend, dataset, tab_set: gr.Tabs, paper_tab: tuple, compare_handles: dict,
         explore_handles: dict) -> None:
    """Wire the Paper tab to the others: computing when shown, a row of the per-query table opening that query
    in Compare (A and B side by side), and the map button opening Explore on the aligned image-only maps.
    The second step of each sets the other tab's controls again with its result, so a refresh of that tab
    arriving in between cannot leave other controls on screen than the ones its result is for."""
    tab, handles = paper_tab
    controls = handles["controls"]
    fn, inputs, outputs = handles["show"]
    shown = gr.State(False)  # whether the Paper tab is the one on screen
    tab.select(fn, inputs, outputs, api_name=False)

    def on_tab(evt: gr.SelectData):
        return evt.value == tab.label or evt.index == tab.id

    tab_set.select(on_tab, None, shown, api_name=False, show_progress="hidden")

    def on_dataset(is_shown, ds, va, vb, m, progress=gr.Progress()):
        if is_shown:
            return fn(ds, va, vb, m, progress)
        head, claim_html, update_a, update_b = handles["load"][0](ds, va, vb)
        return head, claim_html, update_a, update_b, "", ""  # computed when the tab is shown

    dataset.change(on_dataset, [shown, *inputs], outputs, api_name=False, show_progress="hidden")
    pending = gr.State(None)

    compare_controls = compare_handles["controls"]
    compare_fn, _, compare_outputs = compare_handles["compare"]
    guard = compare_handles["guard"]  # the Compare tab's newest-comparison numbers, shared with its own button

    def open_in_compare(ds, va, vb, m, evt: gr.EventData, request: gr.Request):
        note_id = (getattr(evt, "_data", None) or {}).get("note_id")
        if not ds or not note_id:
            return gr.update(), None, gr.update(), gr.update()
        # The query shows at once; its neighbours follow (the first time, both variants encode the dataset).
        return (gr.Tabs(selected="compare"), {"note": str(note_id), "names": [n for n in (va, vb) if n],
                                              "modality": m or "both"}, refresh_notes(backend, ds, str(note_id)),
                guard["begin"](session_of(request)))

    def run_compare(ds, pending_request, k, number, request: gr.Request):
        if not pending_request:
            return tuple(gr.update() for _ in range(len(compare_outputs) + 3))
        shown = compare_fn(ds, pending_request["note"], pending_request["names"], pending_request["modality"], k,
                           number, request)
        if guard["superseded"](session_of(request), number):
            # A newer comparison was asked for on the Compare tab: its controls and result stay on screen.
            return tuple(gr.skip() for _ in range(len(compare_outputs) + 3))
        return (*shown, refresh_notes(backend, ds, pending_request["note"]),
                gr.update(value=pending_request["names"]), gr.update(value=pending_request["modality"]))

    controls["ranks"].click(open_in_compare, [dataset, controls["a"], controls["b"], controls["modality"]],
                            [tab_set, pending, compare_controls["note"], guard["number"]], api_name=False).then(
        run_compare, [dataset, pending, compare_controls["k"], guard["number"]],
        [*compare_outputs, compare_controls["note"], compare_controls["names"], compare_controls["modality"]],
        api_name=False)

    explore_controls = explore_handles["controls"]
    explore_fn, _, explore_outputs = explore_handles["compute"]
    maps_request = gr.State(None)

    def open_maps(ds):
        runs = _runs_by_variant(backend, ds) if ds else {}
        missing = [name for name in (BASIC, NOTELLM2) if name not in runs]
        if missing:
            text = (f"No trained {' or '.join(missing)} on this dataset: the maps of basic and NoteLLM-2 need both "
                    "(train them in Fine-tune).")
            return gr.update(), None, notice(text, "warn")
        return gr.Tabs(selected="explore"), [runs[BASIC], runs[NOTELLM2]], ""

    def compute_maps(ds, names, colour, progress=gr.Progress()):
        if not names:
            return tuple(gr.update() for _ in range(len(explore_outputs) + 2))
        return (*explore_fn(ds, names, "image", colour, progress=progress), gr.update(value=names),
                gr.update(value="image"))

    controls["maps"].click(open_maps, [dataset], [tab_set, maps_request, controls["maps_note"]], api_name=False).then(
        compute_maps, [dataset, maps_request, explore_controls["colour_by"]],
        [*explore_outputs, explore_controls["names"], explore_controls["modality"]], api_name=False)
