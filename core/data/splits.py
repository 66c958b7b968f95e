"""Seeded train/test splits by notes, so that no test note is ever seen in a training pair.

How notes are chosen for the test side: walk the pairs in a seeded order and take a pair into the test set
when neither of its notes is there yet, until `test_fraction` of the paired notes are test notes. Taking
whole pairs (a matching) gives the evaluation one query per chosen pair, the most a note budget allows
(evaluation uses each note at most once). Then:
- test pairs: every pair with both notes in the test set, the chosen ones first (in the seeded order);
- train pairs: every pair with both notes outside it, in store order;
- pairs across the two sides are dropped (counted in `dropped_pairs`): keeping them would leak test notes.

Distractors: the evaluation's candidate pool is every held-out note that is not a query, and a pool of the
queries' targets alone makes chance high and the task unlike I2I, where most candidates are nobody's target.
So the held-out side also gets
- its `test_fraction` share of the notes without any pair (seeded), which costs training nothing;
- `distractor_fraction` of all notes drawn (seeded) from the paired notes outside the query pairs. Their
  pairs are dropped on both sides (counted in `dropped_pairs`): inside the held-out side they would make
  more queries, across it they would leak. On datasets where every note has a pair (openclipart: notes of
  one folder) this is the only source of distractors; it costs the training side those notes' pairs.
The query pairs are chosen before the distractors, so a distractor fraction changes the pool, never the
queries. `distractor_fraction=0` gives the split of earlier runs (which held out no paired distractors).

Length subsets (the reference's short/long query and target): a note's length is the characters of its
title plus content (topics not counted); the threshold is the median length of the notes in test pairs, so both
halves are populated on any dataset; short means length <= threshold, long means above it. The query is
the first note of a pair, the target the second.
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

Pair = tuple[str, str]


@dataclass
class Split:
    train_pairs: list[Pair]
    test_pairs: list[Pair]
    train_note_ids: list[str]
    test_note_ids: list[str]
    dropped_pairs: int = 0
    seed: int = 0
    test_fraction: float = 0.2
    text_lengths: dict[str, int] = field(default_factory=dict)
    distractor_fraction: float = 0.0
    distractor_note_ids: list[str] = field(default_factory=list)

    @property
    def length_threshold(self) -> int | None:
        # Over the notes of the test pairs (distractors excluded), so distractors do not move the split lines.
        paired = {n for pair in self.test_pairs for n in pair}
        lengths = [self.text_lengths[n] for n in self.test_note_ids if n in self.text_lengths and n in paired]
        return int(statistics.median(lengths)) if lengths else None

    def subsets(self, threshold: int | None = None) -> dict[str, list[Pair]]:
        """Test pairs as "all", "short_query", "long_query", "short_target", "long_target".

        Without text lengths (a split made from ids alone) only "all" is filled."""
        out = {"all": list(self.test_pairs), "short_query": [], "long_query": [], "short_target": [], "long_target": []}
        threshold = self.length_threshold if threshold is None else threshold
        if threshold is None:
            return out
        for query, target in self.test_pairs:
            if query in self.text_lengths:
                out["short_query" if self.text_lengths[query] <= threshold else "long_query"].append((query, target))
            if target in self.text_lengths:
                out["short_target" if self.text_lengths[target] <= threshold else "long_target"].append((query, target))
        return out

    def summary(self) -> str:
        return (f"train: {len(self.train_note_ids)} notes, {len(self.train_pairs)} pairs; test: "
                f"{len(self.test_note_ids)} notes, {len(self.test_pairs)} pairs; {self.dropped_pairs} pairs across dropped; "
                f"{len(self.distractor_note_ids)} held-out notes are nobody's target")


DEFAULT_DISTRACTOR_FRACTION = 0.1


def split_pairs(note_ids: list[str], pairs: list[Pair], test_fraction: float = 0.2, seed: int = 0,
                text_lengths: dict[str, int] | None = None,
                distractor_fraction: float = DEFAULT_DISTRACTOR_FRACTION) -> Split:
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not 0.0 <= distractor_fraction < 1.0 or test_fraction + distractor_fraction >= 1.0:
        raise ValueError(f"distractor_fraction must be in [0, 1 - test_fraction), got {distractor_fraction}")
    paired = {n for pair in pairs for n in pair}
    target = round(test_fraction * len(paired))
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    test: set[str] = set()
    chosen: list[int] = []
    for index in order:
        if len(test) + 2 > target:
            break
        a, b = pairs[index]
        if a not in test and b not in test:
            test.update((a, b))
            chosen.append(index)
    chosen_set = set(chosen)
    test_pairs = [pairs[i] for i in chosen]
    test_pairs += [p for i, p in enumerate(pairs) if i not in chosen_set and p[0] in test and p[1] in test]
    ordered_ids = list(dict.fromkeys(list(note_ids) + [n for pair in pairs for n in pair]))
    # Separate seeded streams, so that the distractors never move the query pairs drawn above.
    pairless = [n for n in ordered_ids if n not in paired]
    distractors = random.Random(f"{seed}:pairless").sample(pairless, round(test_fraction * len(pairless)))
    if test_pairs and distractor_fraction > 0:
        candidates = [n for n in ordered_ids if n in paired and n not in test]
        count = min(len(candidates), round(distractor_fraction * len(ordered_ids)))
        distractors += random.Random(f"{seed}:distractors").sample(candidates, count)
    held_out_distractors = set(distractors)
    test |= held_out_distractors
    train_pairs = [p for p in pairs if p[0] not in test and p[1] not in test]
    return Split(
        train_pairs=train_pairs,
        test_pairs=test_pairs,
        train_note_ids=[n for n in ordered_ids if n not in test],
        test_note_ids=[n for n in ordered_ids if n in test],
        dropped_pairs=len(pairs) - len(train_pairs) - len(test_pairs),
        seed=seed,
        test_fraction=test_fraction,
        text_lengths=dict(text_lengths or {}),
        distractor_fraction=distractor_fraction,
        distractor_note_ids=[n for n in ordered_ids if n in held_out_distractors],
    )


def split_dataset(store, name: str, test_fraction: float = 0.2, seed: int = 0,
                  distractor_fraction: float = DEFAULT_DISTRACTOR_FRACTION) -> Split:
    """The split of a stored dataset; the same store contents and seeds always give the same split."""
    notes = store.notes(name)
    lengths = {n.note_id: len(n.title) + len(n.content) for n in notes}
    return split_pairs([n.note_id for n in notes], store.pairs(name), test_fraction, seed, lengths,
                       distractor_fraction)
