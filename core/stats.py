"""Paired comparisons of two variants that answered the same queries.

Every variant is evaluated on one query set (core.evaluate), so a comparison pairs the per-query outcomes:
the difference of two recalls is the mean of per-query differences, and its noise is that of the
differences, far smaller than what two unpaired intervals suggest. Inputs are per-query hits keyed by query
id ({query: 0/1}, e.g. from core.evaluate.per_query_hits); two inputs over different query sets are refused,
never silently intersected, because that would compare different tasks.

Several seeds of one variant: the per-query hit is averaged over its seeds first (`mean_over_seeds`), so each
query contributes one number in [0, 1] per variant, and the queries stay the unit of resampling. Then:
- the interval is a paired bootstrap (percentile, over queries) of the mean per-query difference;
- the p-value is an exact McNemar test (a two-sided binomial test on the discordant queries) when both sides
  are 0/1 hits (one seed each), otherwise a two-sided sign-flip permutation test of the mean difference
  (exact when the queries with a non-zero difference are few enough to enumerate).
`holm` adjusts a family of p-values for the number of comparisons made.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

Hits = Mapping[str, float]


def aligned(a: Hits, b: Hits) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(query ids, a's values, b's values) in one order; ValueError when the query sets differ."""
    if set(a) != set(b):
        only_a, only_b = len(set(a) - set(b)), len(set(b) - set(a))
        raise ValueError(f"the two sides answered different queries ({only_a} only in the first, {only_b} only in "
                         "the second): a paired comparison needs the same query set")
    ids = sorted(a)
    return ids, np.array([float(a[q]) for q in ids]), np.array([float(b[q]) for q in ids])


def mean_over_seeds(per_seed: Sequence[Hits]) -> dict[str, float]:
    """Per-query hit averaged over a variant's seeds; every seed must have answered the same queries."""
    if not per_seed:
        raise ValueError("no seeds to average")
    first = per_seed[0]
    for other in per_seed[1:]:
        aligned(first, other)
    return {q: float(np.mean([hits[q] for hits in per_seed])) for q in first}


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def mcnemar_exact(a: Hits, b: Hits) -> tuple[float, int, int]:
    """(two-sided p, queries only a hits, queries only b hits) for 0/1 hits on the same queries."""
    from scipy.stats import binomtest

    _, x, y = aligned(a, b)
    if not (_is_binary(x) and _is_binary(y)):
        raise ValueError("McNemar's test needs 0/1 hits; use the permutation test for seed-averaged hits")
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    if only_a + only_b == 0:
        return 1.0, 0, 0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue), only_a, only_b


def sign_flip_p(a: Hits, b: Hits, resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided p of the mean per-query difference under random swaps of each query's two values."""
    from scipy.stats import permutation_test

    _, x, y = aligned(a, b)
    differences = x - y
    differences = differences[differences != 0]  # a swap does not change a zero difference
    if differences.size == 0:
        return 1.0
    result = permutation_test((differences,), np.mean, permutation_type="samples", n_resamples=resamples,
                              alternative="two-sided", rng=np.random.default_rng(seed), vectorized=True)
    return float(min(1.0, result.pvalue))


def paired_bootstrap(a: Hits, b: Hits, resamples: int = 9999, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean(a - b), resampling queries (each query keeps both of its values)."""
    from scipy.stats import bootstrap

    _, x, y = aligned(a, b)
    differences = x - y
    if differences.size < 2 or np.all(differences == differences[0]):
        value = float(differences.mean()) if differences.size else float("nan")
        return value, value
    result = bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=level,
                       method="percentile", rng=np.random.default_rng(seed), vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class PairedComparison:
    """a minus b on the same queries."""
    queries: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # "mcnemar-exact" or "sign-flip permutation"
    seeds_a: int = 1
    seeds_b: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


def compare_paired(a: Hits | Sequence[Hits], b: Hits | Sequence[Hits], resamples: int = 9999, seed: int = 0,
                   level: float = 0.95) -> PairedComparison:
    """Compare two variants on the same queries. Each side is one {query: hit} or a list of them (one per
    seed), averaged per query over seeds before pairing."""
    seeds_a = [a] if isinstance(a, Mapping) else list(a)
    seeds_b = [b] if isinstance(b, Mapping) else list(b)
    mean_a, mean_b = mean_over_seeds(seeds_a), mean_over_seeds(seeds_b)
    _, x, y = aligned(mean_a, mean_b)
    low, high = paired_bootstrap(mean_a, mean_b, resamples, seed, level)
    if _is_binary(x) and _is_binary(y):
        p_value, test = mcnemar_exact(mean_a, mean_b)[0], "mcnemar-exact"
    else:
        p_value, test = sign_flip_p(mean_a, mean_b, resamples, seed), "sign-flip permutation"
    return PairedComparison(queries=len(x), mean_a=float(x.mean()) if len(x) else float("nan"),
                            mean_b=float(y.mean()) if len(y) else float("nan"),
                            difference=float((x - y).mean()) if len(x) else float("nan"),
                            ci_low=low, ci_high=high, p_value=p_value, test=test,
                            seeds_a=len(seeds_a), seeds_b=len(seeds_b))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: p-values that control the family-wise error over all comparisons made."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (len(p) - position) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
