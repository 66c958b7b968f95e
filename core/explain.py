"""Why a neighbour is a neighbour: its similarity to the query under text only and under image only, the topics
and words the two notes share, whether the pair is a labelled one, and (late fusion) how much of its vector
the gate took from the image. `Workbench.explain` fills these from the vector cache; this module holds the
pieces that need no model: the record, the word rules, which variants read which modality, and the choice of
a default query."""
from __future__ import annotations

import heapq
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from core.data.schema import Note

# Architectures and baselines that never look at the picture, and the one that never reads the text.
TEXT_ONLY_VARIANTS = frozenset({"text", "zs-text", "zs-llm"})
IMAGE_ONLY_VARIANTS = frozenset({"zs-image"})
# Words too common to explain anything; words shorter than MIN_WORD letters are left out too.
MIN_WORD = 3
STOPWORDS = frozenset("""
about above after again against all also and any are because been before being below between both but can
could did does doing down during each few for from further had has have having her here hers herself him
himself his how into its itself just more most much must not now off once only other our ours out over own
same she should some such than that the their theirs them then there these they this those through too under
until upon very was were what when where which while who whom why will with would you your yours yourself
""".split())
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Explanation:
    """One neighbour of one query, explained. Scores are inner products of L2-normalised vectors (cosines)
    of the same variant under one modality; None where that modality is missing from either note or the
    variant does not read it."""
    note_id: str
    text_score: float | None
    image_score: float | None
    shared_topics: tuple[str, ...]
    shared_words: tuple[str, ...]  # lower-case, in the neighbour's order of first use
    related: bool  # a labelled related pair (pairs.csv), in either direction
    image_share: float | None = None  # late fusion: 1 - the gate's LLM share, averaged over dimensions


def has_text(note: Note) -> bool:
    return bool((note.title or "").strip() or (note.content or "").strip() or list(note.topics or []))


def has_image(note: Note) -> bool:
    image = note.image
    return image is not None and not (isinstance(image, str) and not image.strip())


def reads_text(variant: str) -> bool:
    """Whether an architecture (or a baseline's name) reads the note's text."""
    return variant not in IMAGE_ONLY_VARIANTS


def reads_image(variant: str) -> bool:
    """Whether an architecture (or a baseline's name) looks at the note's picture."""
    return variant not in TEXT_ONLY_VARIANTS


def words(text: str) -> list[str]:
    """The distinct content words of a text, lower-case, in order of first use."""
    seen: dict[str, None] = {}
    for word in _WORD.findall((text or "").lower()):
        if len(word) >= MIN_WORD and word not in STOPWORDS and not word.isdigit():
            seen.setdefault(word, None)
    return list(seen)


def note_words(note: Note) -> list[str]:
    return words(f"{note.title or ''} {note.content or ''}")


def shared_topics(query: Note, neighbour: Note) -> tuple[str, ...]:
    mine = {t.strip().lower() for t in query.topics or [] if t.strip()}
    return tuple(dict.fromkeys(t for t in neighbour.topics or [] if t.strip() and t.strip().lower() in mine))


def shared_words(query: Note, neighbour: Note) -> tuple[str, ...]:
    mine = set(note_words(query))
    return tuple(word for word in note_words(neighbour) if word in mine)


def explanations(query: Note, neighbours: Sequence[Note], text: Sequence[float | None],
                 image: Sequence[float | None], related: Iterable[str] = (),
                 image_share: Mapping[str, float] | None = None) -> list[Explanation]:
    """Assemble the records from scores computed elsewhere (one per neighbour, None where not defined)."""
    related = set(related)
    image_share = image_share or {}
    return [Explanation(note_id=note.note_id, text_score=t, image_score=i,
                        shared_topics=shared_topics(query, note), shared_words=shared_words(query, note),
                        related=note.note_id in related, image_share=image_share.get(note.note_id))
            for note, t, i in zip(neighbours, text, image)]


def default_query(notes: Sequence[Note], related: Mapping[str, Iterable[str]],
                  blank: Callable[[Note], bool], candidates: int = 50) -> str | None:
    """The note a page shows first: the one with the most labelled related notes among those with a title
    and a picture, skipping pictures that `blank` finds near-empty (at most `candidates` pictures are looked
    at). Ties go to the note with more text and topics, then to store order. Without such a note: the most
    related note of all, else the first note; None for an empty dataset."""
    if not notes:
        return None
    order = {note.note_id: i for i, note in enumerate(notes)}

    def key(note: Note):
        return (-len(related.get(note.note_id, ())), -min(len(note_words(note)), 30) - len(note.topics or []),
                order[note.note_id])

    def most_related(pool, count):  # cheap first cut, so a million notes are not all tokenised
        return heapq.nsmallest(count, pool, key=lambda note: (-len(related.get(note.note_id, ())),
                                                              order[note.note_id]))

    eligible = (note for note in notes if (note.title or "").strip() and has_image(note))
    shown = sorted(most_related(eligible, 4 * candidates), key=key)
    for note in shown[:candidates]:
        try:
            if not blank(note):
                return note.note_id
        except Exception:  # an unreadable picture is not a good first query either
            continue
    return most_related(notes, 1)[0].note_id
