"""A dataset's working set: notes picked on the maps and pairs marked on search results, on their way to
becoming training data.

Three kinds of entry, kept per dataset in the workspace's sqlite (table `working_set`, beside the notes):
- notes picked (a box or lasso on an Explore map), in the order they were picked;
- related pairs (query, neighbour): a search result marked "related" to its query;
- hard negatives (query, negative): a search result marked "not related".
A pair has one mark at a time: marking it again replaces the old mark (a related pair is the same whichever
note was the query). Every id is checked against the dataset before anything is written, so a request naming
an unknown note changes nothing. Each row carries the dataset's import time: a dataset deleted and imported
again starts with an empty working set rather than inheriting ids that may now mean other notes.

Out of it come `pairs.csv` (note_id_1,note_id_2: the upload format) and `hard_negatives.csv`
(query_id,negative_id), and a new dataset (a version) in the same store: the picked notes (or all notes) and
the pairs, ready to train on. The version's notes are copied rows that share the source's content-addressed
image files; deleting either dataset keeps the files the other still uses (the store only unlinks images no
note references).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from core.data.store import DatasetInfo, Store
from core.errors import WorkbenchError
from core.workspace import check_dataset_name

# Sizes a request or a working set may reach: a selection is one request, and the whole set is read back on
# every refresh of the page.
MAX_IDS_PER_REQUEST = 50_000
MAX_NOTES = 200_000
MAX_PAIRS = 50_000  # related pairs and hard negatives, each
MAX_ID_LENGTH = 1_000  # longer than any id an import accepts; refused before it reaches a query

RELATED, NOT_RELATED = "related", "not related"
MARKS = (RELATED, NOT_RELATED)
NOTES_PICKED, ALL_NOTES = "picked", "all"  # which notes a new version holds
ADD_TO_PAIRS, MARKED_ONLY = "add", "marked"  # which pairs it holds
PAIRS_FILE, NEGATIVES_FILE, NOTES_FILE = "pairs.csv", "hard_negatives.csv", "working_set_notes.csv"

_NOTE, _POSITIVE, _NEGATIVE = "note", "positive", "negative"


@dataclass(frozen=True)
class WorkingSet:
    dataset: str
    notes: tuple[str, ...] = ()  # picked notes, in the order picked
    related: tuple[tuple[str, str], ...] = ()  # (query, neighbour) marked related
    negatives: tuple[tuple[str, str], ...] = ()  # (query, negative) marked not related

    @property
    def empty(self) -> bool:
        return not (self.notes or self.related or self.negatives)

    def mark_of(self, query_id: str, note_id: str) -> str | None:
        """RELATED, NOT_RELATED or None: the mark a search result of `query_id` carries."""
        if (query_id, note_id) in self.negatives:
            return NOT_RELATED
        if (query_id, note_id) in self.related or (note_id, query_id) in self.related:
            return RELATED
        return None

    def all_note_ids(self) -> list[str]:
        """Picked notes, then the notes of marked pairs not picked: what a version of picked notes holds."""
        ids = dict.fromkeys(self.notes)
        for pair in self.related + self.negatives:
            ids.update(dict.fromkeys(pair))
        return list(ids)

    def summary(self) -> str:
        return (f"{len(self.notes)} notes picked, {len(self.related)} related pairs, "
                f"{len(self.negatives)} hard negatives")


def _shown(values: Iterable[str], limit: int = 3) -> str:
    """Ids as a message quotes them: repr (newlines and quotes visible), cut short, a few of them."""
    values = list(values)
    parts = []
    for value in values[:limit]:
        text = repr(str(value))
        parts.append(text if len(text) <= 40 else text[:37] + "…'")
    more = f" (+{len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(parts) + more


class WorkingSets:
    """Reads and writes the working sets of one store's datasets."""

    def __init__(self, store: Store):
        self.store = store
        with store._db() as db:
            db.conn.execute("create table if not exists working_set (dataset text not null, generation text not null,"
                            " kind text not null, a text not null, b text not null default '',"
                            " primary key (dataset, kind, a, b))")

    # ------------------------------------------------------------------------------------ reading
    def get(self, dataset: str) -> WorkingSet:
        with self.store._db() as db:
            return self._read(db.conn, dataset, self._generation(db.conn, dataset))

    @staticmethod
    def _read(conn, dataset: str, generation: str) -> WorkingSet:
        rows = conn.execute("select kind, a, b from working_set where dataset = ? and generation = ? order by rowid",
                            [dataset, generation]).fetchall()
        return WorkingSet(dataset,
                          notes=tuple(a for kind, a, _ in rows if kind == _NOTE),
                          related=tuple((a, b) for kind, a, b in rows if kind == _POSITIVE),
                          negatives=tuple((a, b) for kind, a, b in rows if kind == _NEGATIVE))

    def _generation(self, conn, dataset) -> str:
        """The dataset's import time (its working set's key beside the name); unknown dataset: the store's
        sentence listing the known ones."""
        if not isinstance(dataset, str):
            raise WorkbenchError("choose a dataset")
        row = conn.execute("select created_at from datasets where name = ?", [dataset]).fetchone()
        if row is None:
            raise self.store._unknown(dataset)
        return str(row[0])

    # ------------------------------------------------------------------------------------ writing
    def _write(self, dataset: str, change) -> WorkingSet:
        """Run `change(conn, generation)` in one write transaction (entries of an earlier import of the same
        name dropped first); returns the working set after it."""
        with self.store._db() as db:
            conn = db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                generation = self._generation(conn, dataset)
                conn.execute("delete from working_set where dataset = ? and generation != ?", [dataset, generation])
                change(conn, generation)
                after = self._read(conn, dataset, generation)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return after

    @staticmethod
    def _checked_ids(conn, dataset: str, note_ids, what: str = "note ids") -> list[str]:
        """`note_ids` without repeats, if every one is a note of the dataset; else WorkbenchError naming the
        unknown ones (nothing written)."""
        if isinstance(note_ids, str) or not isinstance(note_ids, (list, tuple, set, frozenset)):
            raise WorkbenchError(f"{what} must be a list of note ids")
        if len(note_ids) > MAX_IDS_PER_REQUEST:
            raise WorkbenchError(f"too many {what} at once ({len(note_ids)}; at most {MAX_IDS_PER_REQUEST}): "
                                 "pick fewer")
        bad = [value for value in note_ids if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH]
        if bad:
            raise WorkbenchError(f"not note ids: {_shown(bad)}; nothing changed")
        ids = list(dict.fromkeys(note_ids))
        known = {row[0] for row in conn.execute(
            "select note_id from notes where dataset = ? and note_id in (select value from json_each(?))",
            [dataset, json.dumps(ids)])}
        unknown = [value for value in ids if value not in known]
        if unknown:
            raise WorkbenchError(f"dataset '{dataset}' has no note {_shown(unknown)}; nothing changed")
        return ids

    def add_notes(self, dataset: str, note_ids) -> WorkingSet:
        """Add notes to the picked ones (a note picked twice is kept once, in its first place)."""
        def change(conn, generation):
            ids = self._checked_ids(conn, dataset, note_ids)
            have = {row[0] for row in conn.execute("select a from working_set where dataset = ? and kind = ?",
                                                   [dataset, _NOTE])}
            new = [i for i in ids if i not in have]
            if len(have) + len(new) > MAX_NOTES:
                raise WorkbenchError(f"the working set would hold {len(have) + len(new)} notes (at most {MAX_NOTES}); "
                                     "clear it or pick fewer")
            conn.executemany("insert or ignore into working_set (dataset, generation, kind, a) values (?, ?, ?, ?)",
                             [(dataset, generation, _NOTE, i) for i in new])
        return self._write(dataset, change)

    def remove_notes(self, dataset: str, note_ids) -> WorkingSet:
        def change(conn, generation):
            ids = self._checked_ids(conn, dataset, note_ids)
            conn.executemany("delete from working_set where dataset = ? and kind = ? and a = ?",
                             [(dataset, _NOTE, i) for i in ids])
        return self._write(dataset, change)

    def mark(self, dataset: str, query_id, note_id, mark: str | None) -> WorkingSet:
        """Mark a search result of `query_id`: RELATED (a positive pair), NOT_RELATED (a hard negative) or None
        (no mark). The pair's earlier mark, either way round for a related pair, is replaced."""
        if mark is not None and mark not in MARKS:
            raise WorkbenchError(f"unknown mark {_shown([mark], 1)}: use '{RELATED}' or '{NOT_RELATED}'")

        def change(conn, generation):
            if query_id == note_id:
                raise WorkbenchError("a note cannot be marked against itself")
            query, note = self._checked_ids(conn, dataset, [query_id, note_id], "the query and its result")
            positive = ("kind = ? and ((a = ? and b = ?) or (a = ? and b = ?))", [_POSITIVE, query, note, note, query])
            negative = ("kind = ? and a = ? and b = ?", [_NEGATIVE, query, note])
            kind = {RELATED: _POSITIVE, NOT_RELATED: _NEGATIVE}.get(mark)
            same, other = (positive, negative) if kind == _POSITIVE else (negative, positive)
            conn.execute(f"delete from working_set where dataset = ? and {other[0]}", [dataset, *other[1]])
            if kind is None:
                conn.execute(f"delete from working_set where dataset = ? and {same[0]}", [dataset, *same[1]])
                return
            if conn.execute(f"select 1 from working_set where dataset = ? and {same[0]}", [dataset, *same[1]]).fetchone():
                return  # marked so already (a related pair keeps the way round it was first marked)
            count = conn.execute("select count(*) from working_set where dataset = ? and kind = ?",
                                 [dataset, kind]).fetchone()[0]
            if count >= MAX_PAIRS:
                raise WorkbenchError(f"the working set holds {MAX_PAIRS} {'related pairs' if kind == _POSITIVE else 'hard negatives'} "
                                     "already: export and clear it first")
            conn.execute("insert into working_set (dataset, generation, kind, a, b) values (?, ?, ?, ?, ?)",
                         [dataset, generation, kind, query, note])
        return self._write(dataset, change)

    def clear(self, dataset: str, what: str = "all") -> WorkingSet:
        """Empty the working set: "all", "notes" (the picked notes) or "pairs" (related and not related marks)."""
        kinds = {"all": (_NOTE, _POSITIVE, _NEGATIVE), "notes": (_NOTE,), "pairs": (_POSITIVE, _NEGATIVE)}.get(what)
        if kinds is None:
            raise WorkbenchError(f"clear what? {_shown([what], 1)}: use all, notes or pairs")

        def change(conn, generation):
            conn.executemany("delete from working_set where dataset = ? and kind = ?", [(dataset, k) for k in kinds])
        return self._write(dataset, change)

    # ------------------------------------------------------------------------------------ out
    def export(self, dataset: str, folder: str | Path) -> dict[str, Path]:
        """Write pairs.csv (note_id_1,note_id_2), hard_negatives.csv (query_id,negative_id) and
        working_set_notes.csv (note_id) into `folder`; returns {file name: path}."""
        working = self.get(dataset)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, header, rows in ((PAIRS_FILE, ("note_id_1", "note_id_2"), working.related),
                                   (NEGATIVES_FILE, ("query_id", "negative_id"), working.negatives),
                                   (NOTES_FILE, ("note_id",), [(i,) for i in working.notes])):
            path = folder / name
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows(rows)
            out[name] = path
        return out

    def save_as_dataset(self, dataset: str, name, notes: str = NOTES_PICKED, pairs: str = ADD_TO_PAIRS) -> DatasetInfo:
        """A new dataset `name` in the store, in one transaction: the picked notes with the notes of the marked
        pairs (`notes="picked"`) or every note of `dataset` (`"all"`), in the source's order; as pairs, the
        source's pairs between those notes plus the marked related ones (`pairs="add"`) or the marked related
        pairs alone (`"marked"`). A source pair marked not related is left out: the mark corrects it. The hard
        negatives travel in the dataset's meta (`hard_negatives`); the loss trains on in-batch negatives, so
        they inform, they do not train. Refused when the version would have no pair to train on."""
        check_dataset_name(name)
        if notes not in (NOTES_PICKED, ALL_NOTES):
            raise WorkbenchError(f"notes must be '{NOTES_PICKED}' or '{ALL_NOTES}'")
        if pairs not in (ADD_TO_PAIRS, MARKED_ONLY):
            raise WorkbenchError(f"pairs must be '{ADD_TO_PAIRS}' or '{MARKED_ONLY}'")
        with self.store._db() as db:
            conn = db.conn
            conn.execute("BEGIN IMMEDIATE")  # the working set, the source and the new rows read and written at once
            try:
                working = self._read(conn, dataset, self._generation(conn, dataset))
                if conn.execute("select 1 from datasets where name = ?", [name]).fetchone():
                    raise WorkbenchError(f"dataset '{name}' already exists: choose another name")
                keep = working.all_note_ids() if notes == NOTES_PICKED else None
                if keep is not None and not keep:
                    raise WorkbenchError("the working set is empty: pick notes on a map or mark search results "
                                         "first, or save all notes")
                chosen = self._version_pairs(conn, dataset, working, keep, pairs)
                if not chosen:
                    raise WorkbenchError(f"'{name}' would have no related pairs to train on: mark search results "
                                         "related, or keep the dataset's pairs")
                meta = {"derived_from": dataset, "notes": notes, "pairs": pairs,
                        "marked_related": len(working.related), "hard_negatives": [list(p) for p in working.negatives]}
                source = (f"working set of '{dataset}' ({'picked notes' if keep is not None else 'all notes'}, "
                          f"{'its pairs and marked pairs' if pairs == ADD_TO_PAIRS else 'marked pairs'})")
                conn.execute("insert into datasets (name, source, created_at, notes, pairs, images, categories,"
                             " skipped, meta) values (?, ?, ?, 0, 0, 0, 0, 0, ?)",
                             [name, source, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                              json.dumps(meta)])
                which = "" if keep is None else " and note_id in (select value from json_each(?))"
                conn.execute("insert into notes (dataset, note_id, position, title, content, topics, image, category)"
                             " select ?, note_id, row_number() over (order by position) - 1, title, content, topics,"
                             f" image, category from notes where dataset = ?{which} order by position",
                             [name, dataset] + ([json.dumps(keep)] if keep is not None else []))
                count, images, categories = conn.execute(
                    "select count(*), count(distinct image), count(distinct nullif(category, '')) from notes"
                    " where dataset = ?", [name]).fetchone()
                conn.execute("insert into notes_fts(rowid, title) select rowid, title from notes where dataset = ?",
                             [name])
                conn.executemany("insert into pairs (dataset, position, note_id_1, note_id_2) values (?, ?, ?, ?)",
                                 ((name, i, a, b) for i, (a, b) in enumerate(chosen)))
                conn.execute("update datasets set notes = ?, pairs = ?, images = ?, categories = ? where name = ?",
                             [count, len(chosen), images, categories, name])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.store.dataset(name)

    @staticmethod
    def _version_pairs(conn, dataset: str, working: WorkingSet, keep: list[str] | None,
                       pairs: str) -> list[tuple[str, str]]:
        """The pairs of a new version: the source's between kept notes (ADD_TO_PAIRS) less those marked not
        related, then the marked related ones; each pair once, whichever way round."""
        kept = set(keep) if keep is not None else None
        rejected = {frozenset(p) for p in working.negatives}
        chosen: dict[frozenset, tuple[str, str]] = {}
        if pairs == ADD_TO_PAIRS:
            for a, b in conn.execute("select note_id_1, note_id_2 from pairs where dataset = ? order by position",
                                     [dataset]):
                key = frozenset((a, b))
                if a != b and key not in rejected and (kept is None or (a in kept and b in kept)):
                    chosen.setdefault(key, (a, b))
        for a, b in working.related:
            chosen.setdefault(frozenset((a, b)), (a, b))
        return list(chosen.values())

    def hard_negatives(self, name: str) -> list[tuple[str, str]]:
        """The hard negatives a version saved from a working set carries ([] for any other dataset)."""
        with self.store._db() as db:
            row = db.conn.execute("select meta from datasets where name = ?", [name]).fetchone()
        if row is None:
            raise self.store._unknown(name)
        try:
            meta = json.loads(row[0] or "{}")
        except ValueError:
            return []
        return [tuple(p) for p in meta.get("hard_negatives", [])] if isinstance(meta, dict) else []
