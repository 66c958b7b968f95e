"""Retrieval evaluation: which pairs are queries, what the candidate pool is, and how recall is counted.

- Queries: walk the test pairs in order; a pair is used only if neither of its notes was used yet; its first
  note is the query, the second its one target.
- Candidate pool, by protocol:
  - "distractors" (default): every held-out note except the queries: the targets and the held-out notes
    that are nobody's target (see core.data.splits). This is the I2I setting: most candidates are wrong.
  - "targets": the notes of the test pairs except the queries, i.e. the targets only (the protocol of
    earlier reports, kept to compare with them; chance is high and the task unlike I2I).
- Ranking by inner product of the L2-normalised vectors. Equal scores are common (identical texts, zero
  images), so ties are broken by a seeded random order of the pool, never by index order: scores are
  rounded to 5 decimals (float noise from matrix kernels must not break a true tie), then ordered by
  (-score, random priority). `expected_recall@k` is the same figure averaged over every tie order.
- Recall@k for k in {1, 5, 10, 20, 50, 100, 1000} up to the pool size; `chance` holds each metric's value
  under a uniformly random ranking of the same pool (k/pool for Recall@k).
- Category hit@k (when note categories are given): the query's category has a note in the top k (the query
  itself is never in the pool). Queries without a category are left out of it; chance is the
  hypergeometric probability that k random candidates include one of the m same-category notes.
- Per-query results (`per_query`: the target's rank and the best same-category rank, 0-based, keyed by
  query id; `query_subsets`: which queries each subset holds) so that two variants can be compared on the
  same queries with a paired test (core.stats).
- Subsets all / short_query / long_query / short_target / long_target (the query set and pool stay those of
  "all"; a subset reports the queries whose pair falls in it); a bootstrap 95% interval for Recall@10.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

KS = (1, 5, 10, 20, 50, 100, 1000)
SCORE_DECIMALS = 5
SUBSETS = ("all", "short_query", "long_query", "short_target", "long_target")


def select_queries(test_pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    used: set[str] = set()
    queries = []
    for query, target in test_pairs:
        if query == target or query in used or target in used:
            continue
        used.update((query, target))
        queries.append((query, target))
    return queries


def _scores(query_vectors: np.ndarray, pool_vectors: np.ndarray) -> np.ndarray:
    return np.round(query_vectors.astype(np.float64) @ pool_vectors.astype(np.float64).T, SCORE_DECIMALS)


def _tie_priority(pool_size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(pool_size)


def _ranks_of(scores: np.ndarray, priority: np.ndarray, chosen: np.ndarray):
    """0-based rank of column chosen[i] in row i when rows are ordered by (-score, priority), and the counts
    (better, tied others) that give the expected rank over all tie orders."""
    rows = np.arange(len(chosen))
    chosen_scores = scores[rows, chosen][:, None]
    better = (scores > chosen_scores).sum(1)
    tied = scores == chosen_scores
    tied_others = tied.sum(1) - 1
    ahead_in_tie = (tied & (priority[None, :] < priority[chosen][:, None])).sum(1)
    return better + ahead_in_tie, better, tied_others


def target_ranks(query_vectors: np.ndarray, pool_vectors: np.ndarray, targets: Sequence[int], seed: int = 0):
    """0-based rank of each query's target in the pool under a seeded random tie order, and the counts
    (better, tied) that give the expected rank over all tie orders."""
    scores = _scores(query_vectors, pool_vectors)
    return _ranks_of(scores, _tie_priority(pool_vectors.shape[0], seed), np.asarray(targets))


def best_member_ranks(scores: np.ndarray, priority: np.ndarray, members: np.ndarray) -> np.ndarray:
    """0-based rank of the first pool note of each row's member set (members: (Q, P) bool) under the same
    (-score, priority) order as the targets; -1 where a row has no member."""
    has = members.any(1)
    masked = np.where(members, scores, -np.inf)
    best = masked.max(1, keepdims=True)
    # Among members tied at the best score, the one the seeded priority puts first.
    contenders = members & (masked == best)
    first = np.where(contenders, priority[None, :], priority.size).argmin(1)
    ranks = _ranks_of(scores, priority, first)[0]
    return np.where(has, ranks, -1)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(ranks) < k)) if len(ranks) else float("nan")


def expected_hits(better: np.ndarray, tied: np.ndarray, k: int) -> np.ndarray:
    """Probability that the target lands in the top k when its ties are ordered at random."""
    return np.clip(k - better, 0, tied + 1) / (tied + 1)


def recall_chance(pool_size: int, k: int) -> float:
    """Recall@k of a uniformly random ranking: the target is equally likely at every position."""
    return min(k, pool_size) / pool_size if pool_size else float("nan")


def category_hit_chance(pool_size: int, same_category: Sequence[int], k: int) -> float:
    """Mean over queries of P(at least one of m same-category notes among k random picks of the pool)."""
    from scipy.stats import hypergeom

    same_category = np.asarray(same_category)
    if not pool_size or not len(same_category):
        return float("nan")
    draws = min(k, pool_size)
    return float(np.mean(1.0 - hypergeom.pmf(0, pool_size, same_category, draws)))


def bootstrap_interval(hits: np.ndarray, seed: int = 0, samples: int = 2000, level: float = 0.95):
    hits = np.asarray(hits, dtype=np.float64)
    if len(hits) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, len(hits), size=(samples, len(hits)))].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(low), float(high)]


HEADLINE_KS = (10, 50, 100)


def ks_for(pool_size: int) -> list[int]:
    """k values up to the pool size, plus the headline 10/50/100 always (1.0 by definition when k >= pool:
    the CLI contract promises them; read them next to "pool")."""
    return sorted({k for k in KS if k <= pool_size} | set(HEADLINE_KS))


PROTOCOLS = ("distractors", "targets")


def evaluate_vectors(vectors: dict[str, np.ndarray] | tuple[list[str], np.ndarray], test_pairs,
                     subsets: dict[str, list] | None = None, test_note_ids: Sequence[str] | None = None,
                     seed: int = 0, *, categories: dict[str, str] | None = None,
                     protocol: str = "distractors") -> dict:
    """Recall figures from note vectors. `vectors`: {note_id: vector} or (ids, matrix); `test_note_ids`: the
    held-out notes (default: the notes of the test pairs); `categories`: note_id -> category, for the
    category hit rate; `protocol`: "distractors" or "targets" (module doc)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose {' or '.join(PROTOCOLS)}")
    if isinstance(vectors, tuple):
        ids, matrix = vectors
        vectors = {note_id: matrix[i] for i, note_id in enumerate(ids)}
    queries = [(q, t) for q, t in select_queries(test_pairs) if q in vectors and t in vectors]
    query_ids = {q for q, _ in queries}
    held_out = list(test_note_ids) if test_note_ids is not None else [n for pair in test_pairs for n in pair]
    if protocol == "targets":
        in_pairs = {n for pair in test_pairs for n in pair}
        held_out = [n for n in held_out if n in in_pairs]
    pool_ids = [n for n in dict.fromkeys(held_out) if n not in query_ids and n in vectors]
    result: dict = {"queries": len(queries), "pool": len(pool_ids), "protocol": protocol, "seed": seed}
    if not queries or not pool_ids:
        result.update({f"recall@{k}": float("nan") for k in (10, 50, 100)})
        result["warning"] = "no usable test queries"
        return result
    position = {n: i for i, n in enumerate(pool_ids)}
    pool = np.stack([vectors[n] for n in pool_ids])
    query_matrix = np.stack([vectors[q] for q, _ in queries])
    scores = _scores(query_matrix, pool)
    priority = _tie_priority(len(pool_ids), seed)
    ranks, better, tied = _ranks_of(scores, priority, np.array([position[t] for _, t in queries]))
    ks = ks_for(len(pool_ids))
    result["targets_in_pool"] = len({t for _, t in queries})
    result["distractors"] = len(pool_ids) - result["targets_in_pool"]
    result["chance"] = {f"recall@{k}": recall_chance(len(pool_ids), k) for k in ks}
    per_query = {"target": {q: t for q, t in queries}, "rank": {q: int(r) for (q, _), r in zip(queries, ranks)}}

    category_ranks = None
    if categories is not None:
        # Categories as integer codes (pool notes without one: -1, queries without a pool match: -2, which
        # nothing equals), so membership is one vectorised comparison.
        codes: dict[str, int] = {}
        pool_codes = np.array([codes.setdefault(categories.get(n) or "", len(codes)) if categories.get(n) else -1
                               for n in pool_ids])
        query_codes = np.array([codes.get(categories.get(q) or "", -2) if categories.get(q) else -2
                                for q, _ in queries])
        with_category = np.array([bool(categories.get(q)) for q, _ in queries])
        members = query_codes[:, None] == pool_codes[None, :]
        category_ranks = best_member_ranks(scores, priority, members)
        per_query["category_rank"] = {q: (int(r) if r >= 0 else None) for (q, _), r, has
                                      in zip(queries, category_ranks, with_category) if has}
        result["category_queries"] = int(with_category.sum())
        same = members[with_category].sum(1)
        result["chance"].update({f"category_hit@{k}": category_hit_chance(len(pool_ids), same, k) for k in ks})

    subsets = dict(subsets or {})
    subsets["all"] = list(test_pairs)
    result["subsets"] = {}
    result["query_subsets"] = {}
    for name in SUBSETS:
        if name not in subsets:
            continue
        members_set = set(map(tuple, subsets[name]))
        mask = np.array([(q, t) in members_set for q, t in queries], dtype=bool)
        result["query_subsets"][name] = [q for (q, _), m in zip(queries, mask) if m]
        figures = {"queries": int(mask.sum())}
        for k in ks:
            figures[f"recall@{k}"] = recall_at_k(ranks[mask], k)
        if category_ranks is not None:
            counted = mask & with_category
            for k in ks:
                hits = (category_ranks[counted] >= 0) & (category_ranks[counted] < k)
                figures[f"category_hit@{k}"] = float(hits.mean()) if counted.any() else float("nan")
        if name == "all":
            result.update({key: value for key, value in figures.items() if key != "queries"})
            hits10 = (ranks < 10).astype(float)
            result["recall@10_ci95"] = bootstrap_interval(hits10, seed=seed)
            result["expected_recall"] = {f"recall@{k}": float(expected_hits(better, tied, k).mean()) for k in ks}
            result["tied_targets"] = float(np.mean(tied > 0))
            result["mean_rank"] = float(ranks.mean() + 1)
        else:
            result["subsets"][name] = figures
    result["per_query"] = per_query
    return result


def per_query_hits(result: dict, k: int, metric: str = "recall", subset: str = "all") -> dict[str, float]:
    """{query id: 1.0 or 0.0} for Recall@k (metric "recall") or category hit@k (metric "category_hit") from an
    evaluation result, restricted to a subset's queries: the input of the paired tests in core.stats."""
    if "per_query" not in result:
        raise ValueError("this evaluation result has no per-query ranks; evaluate again")
    key = {"recall": "rank", "category_hit": "category_rank"}[metric]
    ranks = result["per_query"].get(key)
    if ranks is None:
        raise ValueError(f"this evaluation result has no {metric} ranks (no note categories were given)")
    members = result.get("query_subsets", {}).get(subset)
    if members is None:
        raise ValueError(f"this evaluation result has no subset {subset!r}")
    return {q: float(ranks[q] is not None and ranks[q] < k) for q in members if q in ranks}
