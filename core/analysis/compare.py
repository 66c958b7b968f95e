"""Neighbour lists of several variants side by side: how much they agree, what entered and left the top k,
and whether each found the query's target.

Definitions (lists are note ids, best first; repeated ids keep their first occurrence):
- overlap@k  = |top_k(a) & top_k(b)| / k, where k is capped at the longer of the two lists when both are
               shorter than k (so two identical short lists still score 1)
- jaccard@k  = |top_k(a) & top_k(b)| / |top_k(a) | top_k(b)|
- rbo        = extrapolated rank-biased overlap of the two top-k lists (see `rank_biased_overlap`)
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd

from core.errors import WorkbenchError


def _unique(items: Sequence) -> list:
    seen, result = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            result.append(item)
    return result


def rank_biased_overlap(a: Sequence, b: Sequence, p: float = 0.9) -> float:
    """Extrapolated RBO, RBO_ext of Webber, Moffat & Zobel (2010), eq. 32, which handles lists of different
    lengths. With S the shorter list (length s), L the longer (length l), and X_d the overlap of the two
    prefixes of depth d (for d > s, S contributes only its s items):

        RBO_ext = (1-p)/p * ( sum_{d=1..l} X_d/d p^d + sum_{d=s+1..l} X_s (d-s)/(s d) p^d )
                  + ( (X_l - X_s)/l + X_s/s ) p^l

    For equal lengths k this is (1-p)/p sum_{d=1..k} (X_d/d) p^d + (X_k/k) p^k. Identical lists give 1,
    disjoint lists 0; two empty lists give 1 (nothing to disagree on), one empty list 0."""
    if not 0 < p < 1:
        raise WorkbenchError(f"RBO persistence p must be in (0, 1), not {p}")
    a, b = _unique(a), _unique(b)
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    s, l = len(short), len(long)
    seen_short, seen_long, overlap = set(), set(), 0
    overlaps = []  # X_d for d = 1..l
    for depth in range(l):
        new_short = short[depth] if depth < s else None
        new_long = long[depth]
        if new_short is not None:
            seen_short.add(new_short)
        seen_long.add(new_long)
        if new_short is not None and new_short in seen_long:
            overlap += 1
        if new_long in seen_short and new_long != new_short:
            overlap += 1
        overlaps.append(overlap)
    x_s, x_l = overlaps[s - 1], overlaps[l - 1]
    total = sum(overlaps[d - 1] / d * p ** d for d in range(1, l + 1))
    total += sum(x_s * (d - s) / (s * d) * p ** d for d in range(s + 1, l + 1))
    return float((1 - p) / p * total + ((x_l - x_s) / l + x_s / s) * p ** l)


def pair_agreement(a: Sequence, b: Sequence, k: int = 10, p: float = 0.9) -> dict:
    """overlap@k, jaccard@k, rbo (of the top-k lists) and the shared count for two ranked lists."""
    top_a, top_b = _unique(a)[:k], _unique(b)[:k]
    shared = len(set(top_a) & set(top_b))
    union = len(set(top_a) | set(top_b))
    depth = min(k, max(len(top_a), len(top_b)))
    return {"overlap": shared / depth if depth else 1.0, "jaccard": shared / union if union else 1.0,
            "rbo": rank_biased_overlap(top_a, top_b, p), "shared": shared}


def compare_neighbour_lists(lists: dict[str, Sequence[str]], k: int = 10, target: str | None = None,
                           p: float = 0.9) -> dict:
    """Compare the ranked neighbour ids of several variants for one query.

    The first variant in `lists` is the baseline. Returns
      {"k", "baseline", "variants": [...],
       "pairs": [{"a", "b", "overlap", "jaccard", "rbo", "shared"} for every pair of variants, in order],
       "per_variant": {name: {"top": top-k ids,
                              "entered": ids in its top k but not the baseline's (its rank order),
                              "left": ids in the baseline's top k but not its own (baseline rank order),
                              "found_target": target in its top k (None without a target),
                              "target_rank": 1-based rank of the target in its whole list, None if absent}}}"""
    if not lists:
        raise WorkbenchError("no neighbour lists to compare")
    if k < 1:
        raise WorkbenchError(f"k must be at least 1, not {k}")
    names = list(lists)
    ranked = {name: _unique(lists[name]) for name in names}
    tops = {name: ranked[name][:k] for name in names}
    baseline = names[0]
    pairs = [{"a": a, "b": b, **pair_agreement(ranked[a], ranked[b], k, p)} for a, b in combinations(names, 2)]
    per_variant = {}
    for name in names:
        top, base = tops[name], tops[baseline]
        rank = ranked[name].index(target) + 1 if target is not None and target in ranked[name] else None
        per_variant[name] = {
            "top": top,
            "entered": [item for item in top if item not in set(base)],
            "left": [item for item in base if item not in set(top)],
            "found_target": None if target is None else target in top,
            "target_rank": rank,
        }
    return {"k": k, "baseline": baseline, "variants": names, "pairs": pairs, "per_variant": per_variant}


def compare_over_dataset(neighbour_lists: dict[str, dict[str, Sequence[str]]], k: int = 10,
                         targets: dict[str, str] | None = None, p: float = 0.9) -> pd.DataFrame:
    """Agreement of every pair of variants over many queries.

    `neighbour_lists[variant][query_id]` is a ranked list of ids. Only queries present for both variants of a
    pair count. One row per pair: variant_a, variant_b, n_queries, overlap, jaccard, rbo (means), and with
    `targets` (query_id -> target id; queries without a target are left out of the hit rates):
    hit_rate_a, hit_rate_b (share of queries whose target is in the top k), both_hit, only_a_hit, only_b_hit
    (shares of the same queries). Hit-rate columns are NaN without targets."""
    names = list(neighbour_lists)
    if len(names) < 2:
        raise WorkbenchError("comparing over a dataset needs at least two variants")
    rows = []
    for a, b in combinations(names, 2):
        queries = [q for q in neighbour_lists[a] if q in neighbour_lists[b]]
        scores = [pair_agreement(neighbour_lists[a][q], neighbour_lists[b][q], k, p) for q in queries]
        row = {"variant_a": a, "variant_b": b, "n_queries": len(queries)}
        for measure in ("overlap", "jaccard", "rbo"):
            row[measure] = float(np.mean([s[measure] for s in scores])) if scores else np.nan
        hits_a, hits_b = [], []
        for q in queries:
            if targets and q in targets:
                hits_a.append(targets[q] in _unique(neighbour_lists[a][q])[:k])
                hits_b.append(targets[q] in _unique(neighbour_lists[b][q])[:k])
        hits_a, hits_b = np.array(hits_a, dtype=bool), np.array(hits_b, dtype=bool)
        has = len(hits_a) > 0
        row.update(hit_rate_a=hits_a.mean() if has else np.nan, hit_rate_b=hits_b.mean() if has else np.nan,
                   both_hit=(hits_a & hits_b).mean() if has else np.nan,
                   only_a_hit=(hits_a & ~hits_b).mean() if has else np.nan,
                   only_b_hit=(~hits_a & hits_b).mean() if has else np.nan, n_targets=len(hits_a))
        rows.append(row)
    return pd.DataFrame(rows)
