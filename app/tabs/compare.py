"""Compare tab (ablation viewer): one query under 2-4 variants side by side, then Recall@k of all variants."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from app.backend import Backend, describe, message
from app.render import badge, esc, mark, md, note_card, notice, query_card, related_badge, warning_toast
from app.tabs.common import (MODALITIES, MODALITY_HELP, Generations, modality_label, neighbours, refresh_notes,
                             refresh_variants, session_of, wire_note_search)
from core.analysis.compare import compare_neighbour_lists
from core.workbench import MODALITIES as MODALITY_NAMES

MAX_VARIANTS = 4


def _pairwise_frame(result: dict) -> pd.DataFrame:
    frame = pd.DataFrame(result["pairs"])
    if "shared" in frame:
        frame["shared"] = frame["shared"].map(lambda x: len(x) if isinstance(x, (list, tuple, set)) else x)
    for col in frame.columns:
        if frame[col].dtype.kind == "f":
            frame[col] = frame[col].round(3)
    return frame


def compare(backend: Backend, dataset, note_id, names, modality, k):
    """(query html, side-by-side html, overlap table, summary markdown)."""
    names = [n for n in (names or []) if n]
    if not dataset or not note_id:
        return "", notice("Pick a dataset and a query note.", "warn"), pd.DataFrame(), ""
    if len(names) < 2:
        warning_toast("Choose at least two variants to compare.")
        return "", notice("Choose two to four variants.", "warn"), pd.DataFrame(), ""
    if len(names) > MAX_VARIANTS:
        warning_toast(f"At most {MAX_VARIANTS} variants side by side; showing the first {MAX_VARIANTS}.")
        names = names[:MAX_VARIANTS]
    k = int(k)
    query = backend.workbench.note(dataset, note_id)
    related = backend.related(dataset).get(note_id, set())
    results, errors = {}, {}
    for name in names:
        try:
            results[name] = neighbours(backend, dataset, name, note_id=note_id, k=k, modality=modality)
        except Exception as error:
            errors[name] = message(error)
    lists = {n: [hit.note_id for hit in rows] for n, rows in results.items()}
    target = sorted(related)[0] if related else None
    if len(lists) >= 2:
        metrics = compare_neighbour_lists(lists, k=k, target=target)
    else:
        metrics = {"pairs": [], "per_variant": {}}
    per = metrics["per_variant"]

    reference = names[0]
    ref_rank = {hit.note_id: hit.rank for hit in results.get(reference, [])}
    columns = []
    rows = k + 2  # every column: its head, k cards, the "left" line; one grid row each, aligned across columns

    def column(cells: list[str]) -> str:
        cells = cells + ["<div></div>"] * (rows - len(cells))
        return f'<div class="wb-col">{"".join(cells)}</div>'

    for name in names:
        head = (f'<div class="wb-colhead"><b>{esc(name)}</b>'
                f'<div class="wb-small">{esc(describe(name, backend.variant_row(dataset, name)))}</div>')
        if name in errors:
            columns.append(column([head + "</div>", notice(errors[name], "error")]))
            continue
        found = sum(1 for hit in results[name] if hit.note_id in related)
        head += (f'<div class="wb-small">related found: {found}/{len(related)}'
                 + (" · reference column" if name == reference else
                    f" · {len([i for i in lists[name] if i not in ref_rank])} entered vs {esc(reference)}") + "</div></div>")
        cards = []
        for hit in results[name]:
            note, score, rank = hit.note, hit.score, hit.rank
            badges = []
            if note.note_id in related:
                badges.append(related_badge())
            if name != reference:
                if note.note_id not in ref_rank:
                    badges.append(badge("entered", "entered"))
                elif ref_rank[note.note_id] != rank:
                    moved = ref_rank[note.note_id] - rank
                    badges.append(badge(f"{'up' if moved > 0 else 'down'} {abs(moved)}", "moved"))
            cards.append(note_card(note, rank=rank, score=score, badges=badges, size=72,
                                   extra_class="compact" + (" is-related" if note.note_id in related else "")))
        left = per.get(name, {}).get("left") if name != reference else None
        if left is None and name != reference:
            left = [i for i in lists[reference] if i not in set(lists[name])]
        left_html = "<div></div>"
        if left:
            titles = {i: backend.workbench.note(dataset, i).title for i in left}
            left_html = ('<div class="wb-left"><span class="wb-badge left">left</span> '
                         + ", ".join(f"#{ref_rank.get(i, '?')} {esc(titles.get(i, i))}" for i in left) + "</div>")
        cards += ["<div></div>"] * (k - len(cards))
        columns.append(column([head, *cards, left_html]))
    side = (f'<div class="wb-compare aligned" style="--cols:{len(names)};--rows:{rows}">'
            f'{"".join(columns)}</div>')
    frame = _pairwise_frame(metrics)
    summary = (f"Top {k} for each variant, modality **{md(modality_label(modality))}**. Badges are relative to "
               f"the first column (**{md(reference)}**): *entered* = not in its top {k}; *up n* / *down n* = its "
               f"rank moved by n; the *left* line lists its neighbours that dropped out. {len(related)} known "
               "related note(s) for this query.")
    return query_card(query), side, frame, summary


def guarded_compare(backend: Backend, generations: Generations, session: str, number, *args):
    """`compare`, unless a newer comparison of the same session was asked for before it started or while it
    ran (another note, the Compare button again, a row opened from the Paper tab): then nothing on the page
    changes (gr.skip), and the newer one fills it. The first comparison of variants that were never encoded
    takes minutes, so an older answer arriving last is the common case, not a corner."""
    skip = (gr.skip(), gr.skip(), gr.skip(), gr.skip())
    if generations.superseded(session, number):
        return skip
    try:
        out = compare(backend, *args)
    except Exception as error:
        out = ("", notice(message(error), "error"), pd.DataFrame(), "")
    return skip if generations.superseded(session, number) else out


def recall_table(backend: Backend, dataset, names, subset, progress=gr.Progress()):
    """Recall@k of the chosen variants on the test split, every modality; (table, markdown)."""
    if not dataset:
        return pd.DataFrame(), "Pick a dataset."
    names = [n for n in (names or []) if n]
    if not names:
        return pd.DataFrame(), "Choose the variants to evaluate."
    progress(0, desc=f"evaluating {len(names)} variants × 3 modalities (cached after the first time)")
    frame = backend.workbench.evaluation_table(
        dataset, names, MODALITY_NAMES,
        progress=lambda done, total, *rest: progress((done, max(total, 1)), desc="encoding test notes"))
    return format_recall(backend, dataset, frame, subset), RECALL_NOTE


RECALL_NOTE = ("Recall@k = share of test queries whose one target is in the top k (ties broken at random, seeded); "
               "[low, high] = 95% bootstrap interval: differences inside it are noise. Modality *image* = text "
               "emptied, *text* = image zeroed. Trained runs use their own test split, zero-shot baselines the "
               "default one (seed 0, 20%).")


def format_recall(backend: Backend, dataset, frame: pd.DataFrame, subset: str = "all") -> pd.DataFrame:
    """One row per variant x modality: counts, Recall@10 with its interval, then the other k as percentages."""
    if frame is None or not len(frame):
        return pd.DataFrame()
    if "split" in frame:
        frame = frame[frame["split"] == (subset or "all")]
    ks = sorted({c for c in frame.columns if c.startswith("recall@") and c.split("@")[1].isdigit()},
                key=lambda c: int(c.split("@")[1]))
    rows = []
    for _, r in frame.iterrows():
        row = {"variant": r["variant"], "what": describe(r["variant"], backend.variant_row(dataset, r["variant"])),
               "modality": r.get("modality", ""), "queries": r.get("queries", ""), "pool": r.get("pool", "")}
        for k in ks:
            value = r.get(k)
            cell = "–" if value is None or pd.isna(value) else f"{100 * value:.1f}%"
            if k == "recall@10" and pd.notna(r.get("recall@10_low", None)) and pd.notna(r.get("recall@10_high", None)):
                cell += f" [{100 * r['recall@10_low']:.0f}, {100 * r['recall@10_high']:.0f}]"
            row[k.replace("recall@", "R@")] = cell
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("queries", "pool"):
        if col in out:
            out[col] = out[col].map(lambda x: "" if x is None or (isinstance(x, float) and pd.isna(x)) else int(x))
    return out


def build(backend: Backend, dataset: gr.Dropdown):
    generations = Generations()
    with gr.Row():
        note = gr.Dropdown(label="Query note", choices=[], allow_custom_value=True, scale=3, elem_id="compare-note")
        wire_note_search(backend, dataset, note)
        names = gr.Dropdown(label="Variants (2-4; the first is the reference)", choices=[], allow_custom_value=True, multiselect=True,
                            max_choices=MAX_VARIANTS, scale=4, elem_id="compare-variants")
        modality = gr.Radio(MODALITIES, value="both", label="Modality", info=MODALITY_HELP, scale=3)
        k = gr.Slider(minimum=2, maximum=30, value=10, step=1, label="Neighbours per variant (k, 2 to 30)",
                      scale=2, min_width=220, elem_id="compare-k")
    run = gr.Button("Compare", variant="primary", elem_id="compare-btn")
    with gr.Row():
        query_html = gr.HTML(elem_id="compare-query")
        summary = gr.Markdown()
    side = gr.HTML(elem_id="compare-side")
    overlap = gr.Dataframe(pd.DataFrame(columns=["a", "b", "overlap", "jaccard", "rbo", "shared"]), label="Overlap between the lists (share of top-k in common, Jaccard, RBO)",
                           interactive=False, max_height=220, elem_id="compare-overlap")
    gr.Markdown("### Recall@k of all variants on this dataset")
    with gr.Row():
        eval_names = gr.Dropdown(label="Variants to evaluate", choices=[], allow_custom_value=True, multiselect=True, scale=4)
        split = gr.Dropdown(["all", "short_query", "long_query", "short_target", "long_target"], value="all",
                            label="Test pairs (short/long: text length vs the median)", scale=2)
        eval_btn = gr.Button("Compute Recall@k table", scale=1, elem_id="eval-btn")
    eval_note = gr.Markdown()
    table = gr.Dataframe(pd.DataFrame(columns=["variant", "what", "modality", "queries", "pool", "R@10", "R@50",
                                               "R@100"]), label="Recall@k (press Compute)", interactive=False,
                         wrap=True, elem_id="recall-table")

    number = gr.State(0)  # this session's newest comparison (Generations)

    def on_compare(ds, n, v, m, kk, gen, request: gr.Request):
        return guarded_compare(backend, generations, session_of(request), gen, ds, n, v, m, kk)

    def start(request: gr.Request):
        return generations.begin(session_of(request))

    inputs, outputs = [dataset, note, names, modality, k, number], [query_html, side, overlap, summary]
    # As in Search: each trigger takes a number at once (never queued behind a comparison), then compares;
    # a comparison that finishes after a newer one was asked for leaves the page to the newer one.
    quick = dict(api_name=False, show_progress="hidden", concurrency_limit=None, trigger_mode="multiple")
    latest = dict(trigger_mode="always_last", concurrency_id="compare")
    run.click(start, None, [number], **quick).then(on_compare, inputs, outputs, api_name="compare", **latest)
    note.input(start, None, [number], **quick).then(on_compare, inputs, outputs, api_name=False, **latest)

    def on_eval(ds, v, s, progress=gr.Progress()):
        try:
            return recall_table(backend, ds, v, s, progress)
        except Exception as error:
            warning_toast(message(error)[:200])
            return pd.DataFrame(), f"{mark('error')} {md(message(error))}"

    eval_btn.click(on_eval, [dataset, eval_names, split], [table, eval_note], api_name="recall_table")

    def refresh(ds, current_note, current, current_eval):
        all_names = [v for _, v in backend.variant_choices(ds)]
        eval_update = refresh_variants(backend, ds, current_eval, multiselect=True, default_count=len(all_names))
        return (refresh_notes(backend, ds, current_note, chosen_by_data=True),
                refresh_variants(backend, ds, current, multiselect=True, default_count=2), eval_update)

    # "controls", "compare" and "guard" let another tab open a query here (the Paper tab's per-query rows):
    # it takes a number from the guard when it asks, so its comparison and this tab's own supersede each other.
    guard = {"number": number, "begin": generations.begin, "superseded": generations.superseded}
    return {"refresh": (refresh, [dataset, note, names, eval_names], [note, names, eval_names]),
            "controls": {"note": note, "names": names, "modality": modality, "k": k},
            "compare": (on_compare, inputs, outputs), "guard": guard}
