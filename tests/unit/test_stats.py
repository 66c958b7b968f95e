"""Paired comparisons on hand-computed examples: exact McNemar, exact sign-flip permutation, the paired
bootstrap, seed averaging, Holm, and refusal of unaligned query sets."""
import numpy as np
import pytest

from core.stats import (aligned, compare_paired, holm, mcnemar_exact, mean_over_seeds, paired_bootstrap,
                        sign_flip_p)


def hits(values, prefix="q"):
    return {f"{prefix}{i}": float(v) for i, v in enumerate(values)}


def test_unaligned_query_sets_are_refused():
    with pytest.raises(ValueError, match="different queries"):
        compare_paired(hits([1, 0, 1]), hits([1, 0]))
    with pytest.raises(ValueError):
        aligned({"a": 1.0}, {"b": 1.0})
    with pytest.raises(ValueError):  # seeds of one variant must share their queries too
        mean_over_seeds([hits([1, 0]), hits([1, 0, 1])])


def test_mcnemar_is_the_exact_binomial_on_discordant_queries():
    # 6 queries only a hits, 1 only b hits, 3 both, 10 neither.
    a = hits([1] * 6 + [0] + [1] * 3 + [0] * 10)
    b = hits([0] * 6 + [1] + [1] * 3 + [0] * 10)
    p, only_a, only_b = mcnemar_exact(a, b)
    assert (only_a, only_b) == (6, 1)
    assert p == pytest.approx(2 * (1 + 7) / 2 ** 7)  # P(X <= 1) + P(X >= 6), X ~ Bin(7, 1/2)
    result = compare_paired(a, b)
    assert result.test == "mcnemar-exact" and result.p_value == pytest.approx(0.125)
    assert result.difference == pytest.approx(5 / 20) and result.queries == 20
    assert result.mean_a == pytest.approx(9 / 20) and result.mean_b == pytest.approx(4 / 20)
    assert mcnemar_exact(a, a)[0] == 1.0


def test_sign_flip_permutation_is_exact_on_few_queries():
    # Three queries, each +1 for a: of the 8 sign patterns, 2 reach |mean| = 1.
    a, b = hits([1, 1, 1, 0]), hits([0, 0, 0, 0])
    assert sign_flip_p(a, b) == pytest.approx(2 / 8)
    # Seed-averaged (non-binary) hits use the permutation test: differences 0.5, 0.5, 1 and one 0.
    a_seeds = [hits([1, 1, 1, 0]), hits([0, 0, 1, 0])]
    result = compare_paired(a_seeds, b)
    assert result.test == "sign-flip permutation" and result.seeds_a == 2
    assert result.mean_a == pytest.approx(2 / 4) and result.difference == pytest.approx(0.5)
    assert result.p_value == pytest.approx(2 / 8)


def test_seed_average_is_per_query():
    assert mean_over_seeds([hits([1, 0, 1]), hits([1, 1, 0])]) == {"q0": 1.0, "q1": 0.5, "q2": 0.5}


def test_paired_bootstrap_is_narrower_than_unpaired_noise():
    rng = np.random.default_rng(0)
    base = rng.random(300) < 0.4
    better = base.copy()
    flip = np.where(~base)[0][:15]  # b hits 15 more queries than a, and every query a hits
    better[flip] = True
    a, b = hits(base), hits(better)
    low, high = paired_bootstrap(b, a)
    assert low > 0 and low < 15 / 300 < high  # the 5-point gain is clear of zero when paired
    result = compare_paired(b, a)
    assert result.p_value == pytest.approx(2 * 0.5 ** 15) and result.ci_low > 0
    assert paired_bootstrap(a, a) == (0.0, 0.0)


def test_holm_adjusts_for_the_number_of_comparisons():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
