"""Neighbour-list comparison against values worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from core.analysis.compare import compare_neighbour_lists, compare_over_dataset, rank_biased_overlap
from core.analysis.modality import modality_neighbours
from core.data.schema import Note
from core.errors import WorkbenchError


def test_rbo_by_hand():
    # a = A B C, b = B A D, p = 0.5: X_1 = 0, X_2 = 2, X_3 = 2 (equal lengths, k = 3)
    # (1-p)/p * (0/1 * .5 + 2/2 * .25 + 2/3 * .125) + 2/3 * .125 = 1/3 + 1/12 = 5/12
    assert rank_biased_overlap(list("ABC"), list("BAD"), p=0.5) == pytest.approx(5 / 12)
    assert rank_biased_overlap(list("ABCD"), list("ABCD")) == pytest.approx(1.0)
    assert rank_biased_overlap(list("AB"), list("CD")) == 0.0
    # uneven lengths (eq. 32): S = A, L = B A, p = 0.5: s = 1, l = 2, X_1 = 0, X_2 = 1, X_s = 0
    # (1-p)/p * (0 + 1/2 * .25 + 0) + ((1 - 0)/2 + 0) * .25 = .125 + .125 = .25
    assert rank_biased_overlap(["A"], ["B", "A"], p=0.5) == pytest.approx(0.25)
    assert rank_biased_overlap(["B", "A"], ["A"], p=0.5) == pytest.approx(0.25)
    with pytest.raises(WorkbenchError):
        rank_biased_overlap(["A"], ["A"], p=1.0)


def test_one_query_by_hand():
    lists = {"basic": ["A", "B", "C", "D"], "micl": ["B", "A", "E", "F"], "late": ["X", "Y", "Z", "W"]}
    result = compare_neighbour_lists(lists, k=3, target="E")
    assert result["baseline"] == "basic" and result["variants"] == ["basic", "micl", "late"]
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    basic_micl = pairs[("basic", "micl")]
    # top 3: {A, B, C} vs {B, A, E}: 2 shared of 3, union 4
    assert basic_micl["overlap"] == pytest.approx(2 / 3)
    assert basic_micl["jaccard"] == pytest.approx(2 / 4)
    # p = 0.9: X = 0, 2, 2 -> (0.1/0.9)(0 + 0.81 + 2/3 * 0.729) + 2/3 * 0.729 = 0.14400 + 0.486 = 0.63
    assert basic_micl["rbo"] == pytest.approx(0.63)
    assert pairs[("basic", "late")]["overlap"] == 0 and pairs[("basic", "late")]["rbo"] == 0
    micl = result["per_variant"]["micl"]
    assert micl["entered"] == ["E"] and micl["left"] == ["C"]
    assert micl["found_target"] is True and micl["target_rank"] == 3
    basic = result["per_variant"]["basic"]
    assert basic["entered"] == [] and basic["left"] == [] and basic["found_target"] is False
    assert basic["target_rank"] is None
    assert compare_neighbour_lists(lists, k=3)["per_variant"]["micl"]["found_target"] is None


def test_over_a_dataset():
    lists = {"a": {"q1": ["x", "y"], "q2": ["u", "v"], "q3": ["m"]},
             "b": {"q1": ["x", "z"], "q2": ["v", "u"]}}
    frame = compare_over_dataset(lists, k=2, targets={"q1": "y", "q2": "u"})
    row = frame.iloc[0]
    assert (row.variant_a, row.variant_b, row.n_queries) == ("a", "b", 2)  # q3 is only in a
    assert row.overlap == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert row.jaccard == pytest.approx((1 / 3 + 1) / 2)
    assert row.hit_rate_a == 1.0 and row.hit_rate_b == 0.5
    assert row.both_hit == 0.5 and row.only_a_hit == 0.5 and row.only_b_hit == 0.0
    assert np.isnan(compare_over_dataset(lists, k=2).iloc[0].hit_rate_a)
    with pytest.raises(WorkbenchError):
        compare_over_dataset({"a": {}}, k=2)


def test_modality_neighbours_asks_each_modality():
    asked = []

    def search(note, modality):
        asked.append(modality)
        return [{"note_id": f"{modality}{i}", "score": 1.0 - i / 10} for i in range(20)]

    result = modality_neighbours(search, Note(note_id="q", title="t", image="q.png"), k=5)
    assert asked == ["both", "image", "text"]
    assert [len(result[m]) for m in ("both", "image", "text")] == [5, 5, 5]
    assert result["image"][0]["note_id"] == "image0"
    no_image = modality_neighbours(search, Note(note_id="q", title="t"), k=5)
    assert no_image["image"] == [] and len(no_image["text"]) == 5
