"""Recall@k on hand-made rankings, seeded tie-breaking that ignores index order, and faiss search."""
import numpy as np
import pytest

from core.evaluate import bootstrap_interval, evaluate_vectors, select_queries, target_ranks
from core.index import VectorIndex


def unit(*values):
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_queries_use_each_note_once():
    pairs = [("a", "b"), ("b", "c"), ("c", "d"), ("e", "a"), ("e", "f")]
    assert select_queries(pairs) == [("a", "b"), ("c", "d"), ("e", "f")]


def test_hand_made_ranking_gives_hand_computed_recalls():
    # Queries q1, q2, q3; pool = every other test note: t1 t2 t3 x1 x2 (no ties).
    vectors = {
        "q1": unit(1, 0, 0), "q2": unit(0, 1, 0), "q3": unit(0, 0, 1),
        "t1": unit(1, 0.1, 0),      # q1's target: rank 1
        "t2": unit(0.5, 1, 0.7),    # q2's target: below x1 (score 0.71 vs 0.8)
        "t3": unit(1, 0.2, 0.1),    # q3's target: last for q3
        "x1": unit(0, 0.8, 0.6), "x2": unit(0.3, 0.3, 0.9),
    }
    pairs = [("q1", "t1"), ("q2", "t2"), ("q3", "t3")]
    test_ids = ["q1", "t1", "q2", "t2", "q3", "t3", "x1", "x2"]
    result = evaluate_vectors(vectors, pairs, test_note_ids=test_ids)
    assert (result["queries"], result["pool"]) == (3, 5)
    # Ranks by hand: q1's target first, q2's second (x1 scores 0.80 against t2's 0.71), q3's fourth.
    pool = ["t1", "t2", "t3", "x1", "x2"]
    for q, t, expected_rank in [("q1", "t1", 1), ("q2", "t2", 2)]:
        scores = {p: float(vectors[q] @ vectors[p]) for p in pool}
        assert sorted(pool, key=lambda p: -scores[p]).index(t) + 1 == expected_rank
    scores_q3 = sorted((float(vectors["q3"] @ vectors[p]), p) for p in pool)[::-1]
    rank_q3 = [p for _, p in scores_q3].index("t3") + 1
    assert rank_q3 == 4
    assert result["recall@1"] == pytest.approx(1 / 3)
    assert result["recall@5"] == pytest.approx(1.0)
    assert result["mean_rank"] == pytest.approx((1 + 2 + 4) / 3)
    for k in (10, 50, 100):
        assert result[f"recall@{k}"] == 1.0  # always reported; k >= pool


def test_ties_do_not_favour_index_order():
    # Every candidate scores the same: the target must not win (or lose) because of where it sits.
    pool = np.tile(unit(1, 0), (50, 1))
    queries = np.tile(unit(1, 0), (200, 1))
    first = target_ranks(queries, pool, [0] * 200, seed=0)[0]
    last = target_ranks(queries, pool, [49] * 200, seed=0)[0]
    assert not (first == 0).all() and not (last == 49).all()
    # Over seeds, a target at index 0 and one at index 49 land in the top 10 equally often (~10/50).
    hits_first = np.mean([target_ranks(queries[:1], pool, [0], seed=s)[0][0] < 10 for s in range(400)])
    hits_last = np.mean([target_ranks(queries[:1], pool, [49], seed=s)[0][0] < 10 for s in range(400)])
    assert abs(hits_first - 0.2) < 0.08 and abs(hits_last - 0.2) < 0.08
    # Seeded: the same seed gives the same ranks.
    assert (target_ranks(queries, pool, [3] * 200, seed=5)[0] == target_ranks(queries, pool, [3] * 200, seed=5)[0]).all()


def test_expected_recall_under_ties_is_exact():
    ids = ["q"] + [f"p{i}" for i in range(20)]
    vectors = {i: unit(1, 0) for i in ids}
    result = evaluate_vectors(vectors, [("q", "p0")], test_note_ids=ids)
    assert result["expected_recall"]["recall@10"] == pytest.approx(10 / 20)
    assert result["tied_targets"] == 1.0


def test_bootstrap_interval_brackets_the_mean():
    hits = np.array([1.0] * 40 + [0.0] * 60)
    low, high = bootstrap_interval(hits, seed=0)
    assert low < 0.4 < high and high - low < 0.25


def test_index_search_excludes_and_breaks_ties_at_random():
    ids = [f"n{i}" for i in range(30)]
    vectors = np.tile(unit(1, 0), (30, 1))
    vectors[5] = unit(1, 1)
    index = VectorIndex(ids, vectors, seed=0)
    top = index.search(unit(1, 0)[None], k=5, exclude=[{"n0"}])[0]
    assert len(top) == 5 and "n0" not in [i for i, _ in top] and "n5" not in [i for i, _ in top]
    firsts = {VectorIndex(ids, vectors, seed=s).search(unit(1, 0)[None], k=1)[0][0][0] for s in range(10)}
    assert len(firsts) > 3  # tied notes come first in different orders, not always n0
    index.add(["new"], unit(1, 0.01)[None])
    assert len(index) == 31


def test_ivf_index_finds_exact_neighbours_on_easy_data():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(400, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(i) for i in range(400)]
    ivf = VectorIndex(ids, vectors, kind="ivf", nlist=8, nprobe=8)
    flat = VectorIndex(ids, vectors)
    assert [i for i, _ in ivf.search(vectors[:3], 5)[0]] == [i for i, _ in flat.search(vectors[:3], 5)[0]]


HAND_MADE = {
    "q1": unit(1, 0, 0), "q2": unit(0, 1, 0), "q3": unit(0, 0, 1),
    "t1": unit(1, 0.1, 0), "t2": unit(0.5, 1, 0.7), "t3": unit(1, 0.2, 0.1),
    "x1": unit(0, 0.8, 0.6), "x2": unit(0.3, 0.3, 0.9),
}
HAND_PAIRS = [("q1", "t1"), ("q2", "t2"), ("q3", "t3")]
HAND_HELD_OUT = ["q1", "t1", "q2", "t2", "q3", "t3", "x1", "x2"]
HAND_CATEGORIES = {"q1": "A", "t1": "A", "q2": "B", "t2": "C", "x1": "B", "q3": "C", "t3": "C", "x2": "D"}


def test_pool_holds_distractors_and_the_targets_protocol_is_kept_by_name():
    result = evaluate_vectors(HAND_MADE, HAND_PAIRS, test_note_ids=HAND_HELD_OUT)
    assert result["protocol"] == "distractors"
    assert (result["pool"], result["targets_in_pool"], result["distractors"]) == (5, 3, 2)
    assert result["per_query"]["rank"] == {"q1": 0, "q2": 1, "q3": 3}
    assert result["per_query"]["target"] == {"q1": "t1", "q2": "t2", "q3": "t3"}
    # Targets only: x1 no longer outranks t2 for q2; for q3 only t2 (0.53) beats t3 (0.10).
    targets = evaluate_vectors(HAND_MADE, HAND_PAIRS, test_note_ids=HAND_HELD_OUT, protocol="targets")
    assert (targets["pool"], targets["distractors"]) == (3, 0)
    assert targets["per_query"]["rank"] == {"q1": 0, "q2": 0, "q3": 1}
    assert targets["recall@1"] == pytest.approx(2 / 3) and result["recall@1"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        evaluate_vectors(HAND_MADE, HAND_PAIRS, test_note_ids=HAND_HELD_OUT, protocol="everything")


def test_chance_levels_are_k_over_pool_and_hypergeometric_for_categories():
    result = evaluate_vectors(HAND_MADE, HAND_PAIRS, test_note_ids=HAND_HELD_OUT, categories=HAND_CATEGORIES)
    assert result["chance"]["recall@1"] == pytest.approx(1 / 5)
    assert result["chance"]["recall@5"] == pytest.approx(1.0)
    assert result["chance"]["recall@10"] == pytest.approx(1.0)  # k >= pool
    # Same-category notes in the pool: q1 -> {t1}, q2 -> {x1}, q3 -> {t2, t3}: 1/5, 1/5, 2/5 for one pick.
    assert result["chance"]["category_hit@1"] == pytest.approx((1 / 5 + 1 / 5 + 2 / 5) / 3)
    # Two picks out of 5 miss m notes with probability C(5-m, 2)/C(5, 2): 6/10 for m=1, 3/10 for m=2.
    from core.evaluate import category_hit_chance, recall_chance
    assert category_hit_chance(5, [1, 1, 2], 2) == pytest.approx(((1 - 0.6) * 2 + (1 - 0.3)) / 3)
    assert recall_chance(1000, 10) == pytest.approx(0.01)
    targets = evaluate_vectors(HAND_MADE, HAND_PAIRS, test_note_ids=HAND_HELD_OUT, protocol="targets")
    assert targets["chance"]["recall@1"] == pytest.approx(1 / 3)


def test_category_hit_counts_any_same_category_note_but_never_the_query():
    result = evaluate_vectors(HAND_MADE, HAND_PAIRS, test_note_ids=HAND_HELD_OUT, categories=HAND_CATEGORIES)
    # q1: t1 (A) first. q2: its target t2 is category C, but x1 (B, a distractor) is first: a category hit
    # without a pair hit. q3 ranks x2 (D), x1 (B), t2 (C): its first same-category note is third.
    assert result["per_query"]["category_rank"] == {"q1": 0, "q2": 0, "q3": 2}
    assert result["category_hit@1"] == pytest.approx(2 / 3)
    assert result["category_hit@5"] == pytest.approx(1.0)
    assert result["category_queries"] == 3
    # A category whose only other member is another query: queries are not candidates, so no hit is
    # possible (rank None), and the chance level of that query is zero.
    categories = dict(HAND_CATEGORIES, q1="Z", q2="Z", t1="A")
    lonely = evaluate_vectors(HAND_MADE, HAND_PAIRS, test_note_ids=HAND_HELD_OUT, categories=categories)
    assert lonely["per_query"]["category_rank"]["q1"] is None
    assert lonely["category_hit@5"] == pytest.approx(1 / 3)
    # A query without a category is left out of the rate instead of counted as a miss.
    unknown = evaluate_vectors(HAND_MADE, HAND_PAIRS, test_note_ids=HAND_HELD_OUT,
                               categories=dict(HAND_CATEGORIES, q3=""))
    assert unknown["category_queries"] == 2 and unknown["category_hit@1"] == pytest.approx(1.0)


def test_category_rank_uses_the_same_seeded_tie_order_as_a_full_sort():
    from core.evaluate import _tie_priority, best_member_ranks
    rng = np.random.default_rng(0)
    scores = np.round(rng.integers(0, 3, size=(40, 30)) / 2, 5)  # many ties
    members = rng.random((40, 30)) < 0.2
    priority = _tie_priority(30, seed=7)
    ranks = best_member_ranks(scores, priority, members)
    for row in range(40):
        order = np.lexsort((priority, -scores[row]))
        expected = min((int(np.where(order == j)[0][0]) for j in np.where(members[row])[0]), default=-1)
        assert ranks[row] == expected


def test_per_query_hits_follow_subsets_and_metrics():
    from core.evaluate import per_query_hits
    subsets = {"short_query": [("q1", "t1"), ("q3", "t3")]}
    result = evaluate_vectors(HAND_MADE, HAND_PAIRS, subsets, test_note_ids=HAND_HELD_OUT,
                              categories=HAND_CATEGORIES)
    assert per_query_hits(result, 1) == {"q1": 1.0, "q2": 0.0, "q3": 0.0}
    assert per_query_hits(result, 2, subset="short_query") == {"q1": 1.0, "q3": 0.0}
    assert per_query_hits(result, 1, metric="category_hit") == {"q1": 1.0, "q2": 1.0, "q3": 0.0}
    with pytest.raises(ValueError):
        per_query_hits(evaluate_vectors(HAND_MADE, HAND_PAIRS, test_note_ids=HAND_HELD_OUT), 1, "category_hit")
