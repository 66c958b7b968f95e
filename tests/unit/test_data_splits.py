"""Splits: seeded, deterministic, no test note in any training pair; the bundled sample is big enough."""
from __future__ import annotations

import random

import pytest

from core.data.sample import ensure_sample_dataset
from core.data.splits import split_dataset, split_pairs
from core.data.store import Store


def random_graph(seed=0, notes=200, pairs=600):
    rng = random.Random(seed)
    ids = [f"n{i}" for i in range(notes)]
    seen, out = set(), []
    while len(out) < pairs:
        a, b = rng.sample(ids, 2)
        if frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            out.append((a, b))
    return ids, out


def queries(test_pairs):
    used, count = set(), 0
    for a, b in test_pairs:
        if a not in used and b not in used:
            used |= {a, b}
            count += 1
    return count


def test_split_is_deterministic_and_does_not_leak():
    ids, pairs = random_graph()
    lengths = {n: i % 37 for i, n in enumerate(ids)}
    first = split_pairs(ids, pairs, 0.2, seed=3, text_lengths=lengths)
    again = split_pairs(ids, pairs, 0.2, seed=3, text_lengths=lengths)
    other = split_pairs(ids, pairs, 0.2, seed=4, text_lengths=lengths)
    assert first == again and first.test_note_ids != other.test_note_ids
    test = set(first.test_note_ids)
    assert not test & set(first.train_note_ids)
    assert set(first.train_note_ids) | test == set(ids)
    assert all(a not in test and b not in test for a, b in first.train_pairs)
    assert all(a in test and b in test for a, b in first.test_pairs)
    assert len(first.train_pairs) + len(first.test_pairs) + first.dropped_pairs == len(pairs)
    # Whole pairs chosen: one query per two notes (40 notes, 20 queries), plus 10% of the notes (20) held out
    # as distractors that are nobody's target.
    assert len(test) == 60 and queries(first.test_pairs) == 20
    assert len(first.distractor_note_ids) == 20
    paired_in_test = {n for pair in first.test_pairs for n in pair}
    assert not paired_in_test & set(first.distractor_note_ids)

    subsets = first.subsets()
    threshold = first.length_threshold
    assert subsets["all"] == first.test_pairs
    assert sorted(subsets["short_query"] + subsets["long_query"]) == sorted(first.test_pairs)
    assert sorted(subsets["short_target"] + subsets["long_target"]) == sorted(first.test_pairs)
    assert all(lengths[q] <= threshold for q, _ in subsets["short_query"])
    assert all(lengths[t] > threshold for _, t in subsets["long_target"])


def test_distractors_never_move_the_queries_and_pairless_notes_get_their_share():
    ids, pairs = random_graph()
    ids = ids + [f"lonely{i}" for i in range(50)]  # notes without any pair
    plain = split_pairs(ids, pairs, 0.2, seed=1, distractor_fraction=0.0)
    with_distractors = split_pairs(ids, pairs, 0.2, seed=1, distractor_fraction=0.1)
    assert plain.test_pairs == with_distractors.test_pairs  # the same queries and targets
    # 20% of the 50 pairless notes go to the held-out side under either setting; they cost no training pair.
    lonely = [n for n in plain.test_note_ids if n.startswith("lonely")]
    assert len(lonely) == 10 and lonely == [n for n in with_distractors.test_note_ids if n.startswith("lonely")]
    assert plain.train_pairs == [p for p in pairs if p[0] not in set(plain.test_note_ids) and p[1] not in set(plain.test_note_ids)]
    # Plus 10% of the 250 notes (25) drawn from the paired notes, whose pairs leave the training side.
    assert len(with_distractors.distractor_note_ids) == 10 + 25
    held_out = set(with_distractors.test_note_ids)
    assert all(a not in held_out and b not in held_out for a, b in with_distractors.train_pairs)
    assert len(with_distractors.train_pairs) < len(plain.train_pairs)
    with pytest.raises(ValueError):
        split_pairs(ids, pairs, 0.5, distractor_fraction=0.5)


def test_split_edge_cases():
    empty = split_pairs(["a", "b"], [], 0.2)
    assert empty.test_pairs == [] and empty.train_note_ids == ["a", "b"]
    none = split_pairs(["a", "b"], [("a", "b")], 0.0)
    assert none.train_pairs == [("a", "b")] and none.test_note_ids == []
    assert split_pairs(["a"], [], 0.2).subsets()["short_query"] == []
    with pytest.raises(ValueError):
        split_pairs(["a"], [], 1.0)


def test_sample_dataset_splits_into_enough_queries(tmp_path):
    store = Store(tmp_path / "ws")
    assert ensure_sample_dataset(store.workspace) == "sample"
    assert ensure_sample_dataset(store.workspace) == "sample"  # idempotent
    assert [d.name for d in store.list_datasets()] == ["sample"]
    info = store.dataset("sample")
    assert info.notes >= 300 and info.pairs >= 600 and info.categories >= 10 and info.images == info.notes
    split = split_dataset(store, "sample", test_fraction=0.2, seed=0)
    assert split == split_dataset(store, "sample", test_fraction=0.2, seed=0)
    assert queries(split.test_pairs) >= 60
    test = set(split.test_note_ids)
    assert not any(a in test or b in test for a, b in split.train_pairs)
    assert all(len(v) > 0 for v in split.subsets().values())
