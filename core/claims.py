"""The paired tests the reproduction judges NoteLLM-2's claims by, over each query's target rank.

A library module: the reproduction's report (RESULTS.md) and the Paper view both judge claims with these
functions, so the comparisons, the splits, the test family Holm adjusts over and the verdict rule are one.
"""
from __future__ import annotations

MAIN_K = 10
ALPHA = 0.05
SPLITS = ("all", "short_query", "long_query", "short_target", "long_target")
HEADROOM = "text+zs-image"

# (claim, a, b, what a - b measures); a and b are (variant, modality).
COMPARISONS = (
    ("1", ("basic", "both"), ("basic", "text"), "`basic` with the image vs without it"),
    ("1", ("basic", "both"), ("basic", "image"), "`basic` with the text vs without it"),
    *(("2", (v, "both"), ("basic", "both"), f"`{v}` vs `basic`") for v in ("micl", "late", "basic+late", "micl+late")),
    # The remedies' direct effect on neglect: whether the note vector, from the picture alone, finds more
    # than `basic`'s does. A remedy can restore the image here and still not move image + text retrieval.
    *(("2", (v, "image"), ("basic", "image"), f"`{v}` vs `basic`, image only")
      for v in ("micl", "late", "basic+late", "micl+late")),
    *(("3", ("micl+late", "both"), (v, "both"), f"`micl+late` vs `{v}`") for v in ("text", "micl", "late", "basic+late")),
    ("4", ("micl+late", "both"), ("zs-concat", "both"), "`micl+late` vs `zs-concat`"),
    ("4", ("micl+late", "both"), (HEADROOM, "both"), f"`micl+late` vs `{HEADROOM}` (tuned)"),
)


def seed_hits(per_query: dict, variant: str, modality: str, split: str = "all", k: int = MAIN_K,
              metric: str = "rank") -> list[dict[str, float]] | None:
    """One {query id: 0/1} per seed of a variant, restricted to a split's queries; None when not evaluated."""
    try:
        by_seed = per_query["results"][variant][modality]
        members = per_query["queries"][split]
    except (KeyError, TypeError):
        return None
    out = []
    for entry in by_seed.values():
        ranks = entry.get(metric)
        if ranks is None:
            return None
        out.append({q: float(ranks[q] is not None and ranks[q] < k) for q in members if q in ranks})
    return out or None


def paired_comparisons(per_query: dict, comparisons=COMPARISONS, splits=SPLITS, k: int = MAIN_K,
                       adjust: bool = True) -> list[dict]:
    """Every comparison whose two sides were evaluated, on every split with queries: rows with the paired
    difference of Recall@k (a - b), its 95% bootstrap interval, the raw and (with `adjust`) Holm-adjusted p
    and a verdict."""
    from core.stats import compare_paired

    rows = []
    for claim, a, b, label in comparisons:
        for split in splits:
            hits_a, hits_b = seed_hits(per_query, *a, split, k), seed_hits(per_query, *b, split, k)
            if not hits_a or not hits_b or not hits_a[0]:
                continue
            result = compare_paired(hits_a, hits_b)
            rows.append({"claim": claim, "a": a, "b": b, "label": label, "split": split, "measure": "Recall@10",
                         **result.as_dict()})
    return holm_verdicts(rows) if adjust else rows


SALIENCY_COMPARISONS = (("micl", "basic"), ("micl+late", "basic"))
SALIENCY_MEASURES = ("S_v/S_t", "S_visual/S_t")


def saliency_comparisons(saliency_batches: dict | None) -> list[dict]:
    """mICL variants vs `basic` on the layer-averaged S_v / S_t and S_visual / S_t, paired over batches of the
    same test pairs (sign-flip permutation; batches where either side is unmeasured are left out). Variants
    whose batches were made of different pairs are not compared."""
    from core.stats import compare_paired

    rows = []
    for a, b in SALIENCY_COMPARISONS:
        side_a, side_b = (saliency_batches or {}).get(a), (saliency_batches or {}).get(b)
        if not side_a or not side_b or side_a.get("pairs_digest") != side_b.get("pairs_digest"):
            continue
        for measure in SALIENCY_MEASURES:
            values_a, values_b = side_a.get(measure) or [], side_b.get(measure) or []
            kept = [i for i in range(min(len(values_a), len(values_b)))
                    if values_a[i] is not None and values_b[i] is not None]
            if len(kept) < 2:
                continue
            result = compare_paired({f"b{i}": values_a[i] for i in kept}, {f"b{i}": values_b[i] for i in kept})
            rows.append({"claim": "1", "a": (a, "both"), "b": (b, "both"), "label": f"`{a}` vs `{b}`",
                         "split": "batches", "measure": measure, **result.as_dict()})
    return rows


def holm_verdicts(rows: list[dict]) -> list[dict]:
    """Holm-adjusted p over all rows (one family) and each row's verdict."""
    from core.stats import holm

    for row, adjusted in zip(rows, holm([row["p_value"] for row in rows]) if rows else []):
        row["p_holm"] = adjusted
        row["verdict"] = ("no difference shown" if adjusted >= ALPHA
                          else "higher" if row["difference"] > 0 else "lower")
    return rows
