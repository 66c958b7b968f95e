"""Retrieval evaluation as NOTELLM2.md ("Evaluation") fixes it.

- Queries: walk the test pairs in order; a pair is used only if neither of its notes was used yet; its first
  note is the query, the second its one target. Candidate pool: every test note except the queries.
- Ranking by inner product of the L2-normalised vectors. Equal scores are common (identical texts, zero
  images), so ties are broken by a seeded random order of the pool, never by index order: scores are
  rounded to 5 decimals (float noise from matrix kernels must not break a true tie), then ordered by
  (-score, random priority). `expected_recall@k` is the same figure averaged over every tie order.
- Recall@k for k in {1, 5, 10, 20, 50, 100, 1000} up to the pool size; subsets all / short_query /
  long_query / short_target / long_target (the query set and pool stay those of "all"; a subset reports
  the queries whose pair falls in it); a bootstrap 95% interval for Recall@10 (with ~170 queries its
  standard error is ~4 points: compare variants with the interval, not the point).
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


def target_ranks(query_vectors: np.ndarray, pool_vectors: np.ndarray, targets: Sequence[int], seed: int = 0):
    """0-based rank of each query's target in the pool under a seeded random tie order, and the counts
    (better, tied) that give the expected rank over all tie orders."""
    scores = np.round(query_vectors.astype(np.float64) @ pool_vectors.astype(np.float64).T, SCORE_DECIMALS)
    priority = np.random.default_rng(seed).permutation(pool_vectors.shape[0])
    targets = np.asarray(targets)
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]
    better = (scores > target_scores).sum(1)
    tied = scores == target_scores
    tied_others = tied.sum(1) - 1
    ahead_in_tie = (tied & (priority[None, :] < priority[targets][:, None])).sum(1)
    return better + ahead_in_tie, better, tied_others


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(ranks) < k)) if len(ranks) else float("nan")


def expected_hits(better: np.ndarray, tied: np.ndarray, k: int) -> np.ndarray:
    """Probability that the target lands in the top k when its ties are ordered at random."""
    return np.clip(k - better, 0, tied + 1) / (tied + 1)


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


def evaluate_vectors(vectors: dict[str, np.ndarray] | tuple[list[str], np.ndarray], test_pairs,
                     subsets: dict[str, list] | None = None, test_note_ids: Sequence[str] | None = None,
                     seed: int = 0) -> dict:
    """Recall figures from note vectors. `vectors`: {note_id: vector} or (ids, matrix)."""
    if isinstance(vectors, tuple):
        ids, matrix = vectors
        vectors = {note_id: matrix[i] for i, note_id in enumerate(ids)}
    queries = [(q, t) for q, t in select_queries(test_pairs) if q in vectors and t in vectors]
    query_ids = {q for q, _ in queries}
    pool_ids = [n for n in dict.fromkeys(test_note_ids or [n for pair in test_pairs for n in pair])
                if n not in query_ids and n in vectors]
    result: dict = {"queries": len(queries), "pool": len(pool_ids), "seed": seed}
    if not queries or not pool_ids:
        result.update({f"recall@{k}": float("nan") for k in (10, 50, 100)})
        result["warning"] = "no usable test queries"
        return result
    position = {n: i for i, n in enumerate(pool_ids)}
    pool = np.stack([vectors[n] for n in pool_ids])
    query_matrix = np.stack([vectors[q] for q, _ in queries])
    ranks, better, tied = target_ranks(query_matrix, pool, [position[t] for _, t in queries], seed)
    ks = ks_for(len(pool_ids))
    subsets = dict(subsets or {})
    subsets["all"] = list(test_pairs)
    result["subsets"] = {}
    for name in SUBSETS:
        if name not in subsets:
            continue
        members = set(map(tuple, subsets[name]))
        mask = np.array([(q, t) in members for q, t in queries], dtype=bool)
        figures = {"queries": int(mask.sum())}
        for k in ks:
            figures[f"recall@{k}"] = recall_at_k(ranks[mask], k)
        if name == "all":
            result.update({key: value for key, value in figures.items() if key != "queries"})
            hits10 = (ranks < 10).astype(float)
            result["recall@10_ci95"] = bootstrap_interval(hits10, seed=seed)
            result["expected_recall"] = {f"recall@{k}": float(expected_hits(better, tied, k).mean()) for k in ks}
            result["tied_targets"] = float(np.mean(tied > 0))
            result["mean_rank"] = float(ranks.mean() + 1)
        else:
            result["subsets"][name] = figures
    return result
