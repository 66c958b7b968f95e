"""The workspace's datasets: notes, pairs and images in sqlite (through sqlite-utils) plus content-addressed files.

An import is one sqlite transaction: readers (WAL mode, so they never block on the writer) see either none
of a dataset or all of it. Images are checked and normalised before the transaction and written under the
sha256 of their normalised bytes, so two datasets sharing an image share one file. New image files wait in a
folder of their own (WORKSPACE/incoming/<pid>-<id>/) and move into images/ inside the import's transaction, just
before it commits, so an import that fails, or a process killed mid-import, leaves nothing in images/; the
first Store a process opens on a workspace removes what such a kill left: incoming folders of processes that
are gone, and image files no dataset references. Replacing a dataset is explicit: delete it, then import.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import sqlite_utils

from core.data.images import ImageLimits, ImageProblem, ImageSource, normalise_image, open_images
from core.data.problems import Problem, UploadError
from core.data.readers import FieldLimits, NotesRead, PairsRead, iter_notes, read_pairs
from core.data.schema import Note
from core.errors import WorkbenchError
from core.workspace import Workspace, check_dataset_name

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
NOTE_SEARCH_LIMIT = 50
INCOMING_MAX_AGE_S = 7 * 86400  # an incoming folder this old is left over even if its pid was reused
_tidied: set[str] = set()  # workspaces whose leftovers this process has removed already
_tidy_lock = threading.Lock()


@dataclass
class DatasetInfo:
    name: str
    notes: int
    pairs: int
    images: int
    created_at: str
    source: str
    categories: int = 0
    skipped: int = 0  # rows left out by --skip-bad (notes and pairs together)

    def line(self) -> str:
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return (f"{self.name}: {self.notes} notes, {self.pairs} pairs, {self.images} images, "
                f"{self.categories} categories{skipped} (from {self.source}, {self.created_at})")


@dataclass
class ImportReport:
    dataset: str
    read: int = 0
    imported: int = 0
    skipped: list[tuple[str, int, str]] = field(default_factory=list)
    pairs_read: int = 0
    pairs_imported: int = 0
    pairs_skipped: list[tuple[str, int, str]] = field(default_factory=list)
    ignored: list[tuple[str, int, str]] = field(default_factory=list)  # unsafe archive entries left out
    images: int = 0  # notes with an image
    images_new: int = 0  # image files this import added to the workspace

    def summary(self) -> str:
        text = (f"imported '{self.dataset}': {self.imported} of {self.read} notes ({self.images} with images), "
                f"{self.pairs_imported} of {self.pairs_read} pairs")
        if self.skipped or self.pairs_skipped:
            text += f"; skipped {len(self.skipped)} notes and {len(self.pairs_skipped)} pairs"
        if self.ignored:
            text += f"; ignored {len(self.ignored)} unsafe archive entries"
        return text

    def write(self, path: str | os.PathLike) -> None:
        """Everything left out, one row each: kind (note, pair, archive), file, row, reason."""
        with open(path, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["kind", "file", "row", "reason"])
            for kind, problems in (("note", self.skipped), ("pair", self.pairs_skipped), ("archive", self.ignored)):
                for file, row, reason in problems:
                    writer.writerow([kind, file, row, reason])


class Store:
    def __init__(self, workspace: Workspace | str | os.PathLike | None = None,
                 image_limits: ImageLimits = ImageLimits(), field_limits: FieldLimits = FieldLimits()):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        self.image_limits = image_limits
        self.field_limits = field_limits
        with self._db() as db:
            self._create_tables(db)
        with _tidy_lock:
            first = str(self.workspace.root) not in _tidied
            _tidied.add(str(self.workspace.root))
        if first:
            try:
                self.remove_orphans()
            except sqlite3.OperationalError:  # a long import holds the write lock: tidy up next time
                with _tidy_lock:
                    _tidied.discard(str(self.workspace.root))

    # ------------------------------------------------------------------------------------ connection
    @contextmanager
    def _db(self):
        """A fresh connection per operation: safe across threads (Gradio) and processes (jobs)."""
        conn = sqlite3.connect(self.workspace.db_path, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            yield sqlite_utils.Database(conn)
        finally:
            conn.close()

    @staticmethod
    def _create_tables(db: sqlite_utils.Database) -> None:
        db["datasets"].create({"name": str, "source": str, "created_at": str, "notes": int, "pairs": int,
                               "images": int, "categories": int, "skipped": int, "meta": str},
                              pk="name", if_not_exists=True)
        db["notes"].create({"dataset": str, "note_id": str, "position": int, "title": str, "content": str,
                            "topics": str, "image": str, "category": str},
                           pk=("dataset", "note_id"), if_not_exists=True)
        db["pairs"].create({"dataset": str, "position": int, "note_id_1": str, "note_id_2": str},
                           pk=("dataset", "position"), if_not_exists=True)
        db["notes"].create_index(["dataset", "position"], if_not_exists=True)
        db["notes"].create_index(["image"], if_not_exists=True)
        # Words of the titles, for the note picker: a full-text index over the notes table's own rows (external
        # content, so titles are not stored twice), with prefix indexes for the 1-3 letters a user has typed so
        # far (without them "w1"* merged a thousand words' lists: 240 ms at a million notes, 1.4 ms with).
        # A workspace made before it (or before its prefix indexes) is indexed once here.
        def current() -> bool:
            found = db.conn.execute("select sql from sqlite_master where name = 'notes_fts'").fetchone()
            return bool(found) and "prefix" in found[0]

        if not current():
            db.conn.execute("BEGIN IMMEDIATE")  # two processes opening an old workspace build it once
            try:
                if not current():
                    db.conn.execute("drop table if exists notes_fts")
                    db.conn.execute("create virtual table notes_fts using fts5(title, content='notes',"
                                    " content_rowid='rowid', tokenize='unicode61 remove_diacritics 2',"
                                    " prefix='1 2 3')")
                    db.conn.execute("insert into notes_fts(notes_fts) values ('rebuild')")
                db.conn.execute("COMMIT")
            except BaseException:
                db.conn.execute("ROLLBACK")
                raise

    # ---------------------------------------------------------------------------------------- reading
    def list_datasets(self) -> list[DatasetInfo]:
        with self._db() as db:
            rows = list(db.query("select * from datasets order by created_at, name"))
        return [self._info(row) for row in rows]

    @staticmethod
    def _info(row: dict) -> DatasetInfo:
        return DatasetInfo(name=row["name"], notes=row["notes"], pairs=row["pairs"], images=row["images"],
                           created_at=row["created_at"], source=row["source"], categories=row["categories"] or 0,
                           skipped=row["skipped"] or 0)

    def dataset(self, name: str) -> DatasetInfo:
        with self._db() as db:
            rows = list(db.query("select * from datasets where name = ?", [name]))
        if not rows:
            raise self._unknown(name)
        return self._info(rows[0])

    def has_dataset(self, name: str) -> bool:
        with self._db() as db:
            return bool(list(db.query("select 1 from datasets where name = ?", [name])))

    def _unknown(self, name: str) -> WorkbenchError:
        known = ", ".join(d.name for d in self.list_datasets()) or "none yet"
        return WorkbenchError(f"unknown dataset '{name}' (datasets: {known})")

    def _require(self, db, name: str) -> None:
        if not list(db.query("select 1 from datasets where name = ?", [name])):
            raise self._unknown(name)

    def _note(self, row: dict) -> Note:
        return Note(note_id=row["note_id"], title=row["title"] or "", content=row["content"] or "",
                    topics=json.loads(row["topics"] or "[]"),
                    image=str(self.workspace.images_dir / row["image"]) if row["image"] else None,
                    category=row["category"] or "")

    def notes(self, name: str, note_ids: Iterable[str] | None = None) -> list[Note]:
        """Notes in store (upload) order; `image` is the absolute path of the normalised image or None."""
        with self._db() as db:
            self._require(db, name)
            rows = list(db.query("select * from notes where dataset = ? order by position", [name]))
        notes = [self._note(row) for row in rows]
        if note_ids is None:
            return notes
        wanted = set(note_ids)
        missing = wanted - {n.note_id for n in notes}
        if missing:
            shown = ", ".join(sorted(missing)[:5])
            raise WorkbenchError(f"dataset '{name}' has no note {shown}" + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
        return [n for n in notes if n.note_id in wanted]

    def note(self, name: str, note_id: str) -> Note:
        with self._db() as db:
            self._require(db, name)
            rows = list(db.query("select * from notes where dataset = ? and note_id = ?", [name, str(note_id)]))
        if not rows:
            raise WorkbenchError(f"dataset '{name}' has no note '{note_id}'")
        return self._note(rows[0])

    def search_notes(self, name: str, query: str = "", limit: int = NOTE_SEARCH_LIMIT) -> list[Note]:
        """At most `limit` notes for a picker, without reading the dataset: the first notes in upload order for
        an empty query; else the note whose id is the query, then ids starting with it, then notes whose title
        has words starting with each word of the query (any case or accent). Every branch is an index lookup
        (primary key, position, full-text), so a million-note dataset answers as fast as a small one."""
        query = (query or "").strip()[:200]
        limit = max(1, min(int(limit), 1000))
        with self._db() as db:
            self._require(db, name)
            conn = db.conn
            conn.row_factory = sqlite3.Row
            if not query:
                rows = conn.execute("select * from notes where dataset = ? order by position limit ?",
                                    [name, limit]).fetchall()
                return [self._note(dict(row)) for row in rows]
            found: dict[str, dict] = {}
            # Two lookups rather than one ORDER BY: sorting the exact id first would sort every prefix match.
            for row in [*conn.execute("select * from notes where dataset = ? and note_id = ?", [name, query]),
                        *conn.execute("select * from notes where dataset = ? and note_id >= ? and note_id < ?"
                                      " order by note_id limit ?", [name, query, query + "\U0010ffff", limit])]:
                found.setdefault(row["note_id"], dict(row))
            words = re.findall(r"\w+", query)
            if words and len(found) < limit:
                match = " ".join(f'"{word}"*' for word in words)
                # CROSS JOIN keeps the full-text match as the outer loop (sqlite's planner otherwise may walk the
                # dataset's rows and test each against the match: seconds to minutes at a million).
                for row in conn.execute("select notes.* from notes_fts cross join notes on notes.rowid = notes_fts.rowid"
                                        " where notes_fts match ? and notes.dataset = ? limit ?",
                                        [match, name, limit]):
                    found.setdefault(row["note_id"], dict(row))
        return [self._note(row) for row in list(found.values())[:limit]]

    def pairs(self, name: str) -> list[tuple[str, str]]:
        with self._db() as db:
            self._require(db, name)
            return [(r["note_id_1"], r["note_id_2"]) for r in
                    db.query("select note_id_1, note_id_2 from pairs where dataset = ? order by position", [name])]

    def categories(self, name: str) -> dict[str, int]:
        """Category -> number of notes, largest first (notes without a category count under "")."""
        with self._db() as db:
            self._require(db, name)
            rows = db.query("select category, count(*) as n from notes where dataset = ? group by category"
                            " order by n desc, category", [name])
            return {r["category"] or "": r["n"] for r in rows}

    # ------------------------------------------------------------------------------------ deleting
    def delete_dataset(self, name: str) -> None:
        """Remove a dataset and the image files no other dataset uses."""
        with self._db() as db:
            conn = db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not conn.execute("select 1 from datasets where name = ?", [name]).fetchone():
                    raise self._unknown(name)
                images = {r[0] for r in conn.execute("select distinct image from notes where dataset = ? and image is not null", [name])}
                conn.execute("delete from pairs where dataset = ?", [name])
                conn.execute("insert into notes_fts(notes_fts, rowid, title) select 'delete', rowid, title from notes"
                             " where dataset = ?", [name])
                conn.execute("delete from notes where dataset = ?", [name])
                conn.execute("delete from datasets where name = ?", [name])
                # Unlink while holding the write lock: an import re-checks its files inside its own transaction.
                for image in images:
                    if not conn.execute("select 1 from notes where image = ? limit 1", [image]).fetchone():
                        (self.workspace.images_dir / image).unlink(missing_ok=True)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------------------------ importing
    def import_dataset(self, name: str, notes_file, pairs_file=None, images=None, skip_bad: bool = False,
                       progress: Progress | None = None, source: str | None = None) -> ImportReport:
        """Check everything, then import in one transaction. Without `skip_bad` any problem refuses the
        whole upload (UploadError listing them, store unchanged); with it the bad rows are left out and
        listed in the report. Problems with a whole file always refuse the upload."""
        check_dataset_name(name)
        if self.has_dataset(name):
            raise WorkbenchError(f"dataset '{name}' already exists; delete it first (python -m core delete-dataset {name})")
        notes_path = Path(notes_file)
        if not notes_path.is_file():
            raise WorkbenchError(f"notes file not found: {notes_path}")
        if pairs_file is not None and not Path(pairs_file).is_file():
            raise WorkbenchError(f"pairs file not found: {pairs_file}")
        return self.import_records(
            name, notes_path.name, lambda result: iter_notes(notes_path, result, self.field_limits),
            (lambda: read_pairs(pairs_file, self.field_limits.note_id)) if pairs_file is not None else None,
            lambda: open_images(images, notes_path), skip_bad=skip_bad, progress=progress,
            source=source or _describe_source(notes_path, pairs_file, images))

    def import_records(self, name: str, notes_label: str, note_records: Callable[[NotesRead], Iterable],
                       read_pairs_file: Callable[[], PairsRead] | None, open_image_source: Callable[[], ImageSource],
                       skip_bad: bool = False, progress: Progress | None = None, source: str = "",
                       normalise: Callable[[bytes, ImageLimits], tuple[bytes, str]] = normalise_image) -> ImportReport:
        """The import behind every upload format (core.data.bridges adds Parquet and Hugging Face folders).
        `note_records(result)` yields the checked NoteRecords (counting rows and row problems in `result`),
        `read_pairs_file()` reads the pairs, `open_image_source()` opens what the image cells name, and
        `normalise` turns fetched bytes into the stored image. Same checks, policy and transaction as
        `import_dataset`."""
        check_dataset_name(name)
        if self.has_dataset(name):
            raise WorkbenchError(f"dataset '{name}' already exists; delete it first (python -m core delete-dataset {name})")
        progress = progress or (lambda done, total, message: None)

        progress(0, 1, "reading notes")
        notes_read = NotesRead(file=notes_label)
        staging = _Staging(self.workspace.root)
        incoming = _IncomingImages(self.workspace)
        image_source = None
        try:
            # The good rows go to a scratch sqlite file as they are read: memory holds the note ids, not the notes.
            staging.add(note_records(notes_read))
            pairs_read = read_pairs_file() if read_pairs_file is not None else None
            report = ImportReport(dataset=name, read=notes_read.read,
                                  pairs_read=pairs_read.read if pairs_read else 0)
            image_source = open_image_source()
            note_problems = list(notes_read.problems)
            stored: list[tuple[str, int]] = []  # (image file, line)
            with_images = staging.count("image_ref != ''")
            for done, (line, ref) in enumerate(staging.image_refs()):
                progress(done, with_images, "checking images")
                try:
                    data = image_source.fetch(ref, self.image_limits)
                    normalised, extension = normalise(data, self.image_limits)
                except ImageProblem as problem:
                    note_problems.append(Problem(notes_read.file, line, f"image '{ref}': {problem}"))
                    continue
                file = incoming.add(normalised, extension)
                stored.append((file, line))
            progress(with_images, max(with_images, 1), "checking images")
            staging.set_images(stored)
            del stored
            bad_lines = {p.row for p in note_problems}
            staging.mark_bad(bad_lines)
            # A note id is imported when its first row is; every failing row has a problem on its line.
            first_line = notes_read.ids

            def kept(note_id: str) -> bool:
                line = first_line.get(note_id)
                return line is not None and line not in bad_lines

            pair_problems, pairs = [], []
            if pairs_read is not None:
                pair_problems = list(pairs_read.problems)
                for line, a, b in pairs_read.pairs:
                    reasons = []
                    for note_id in (a, b):
                        if kept(note_id):
                            continue
                        if note_id in first_line:
                            reasons.append(f"note '{note_id}' is not imported (problem on {notes_read.file} line "
                                           f"{first_line[note_id]})")
                        else:
                            reasons.append(f"unknown note_id '{note_id}' (not in {notes_read.file})")
                    if reasons:
                        pair_problems.append(Problem(pairs_read.file, line, "; ".join(reasons)))
                    else:
                        pairs.append((a, b))

            note_problems.sort(key=lambda p: p.row)
            pair_problems.sort(key=lambda p: p.row)
            problems = image_source.problems + note_problems + pair_problems
            if problems and not skip_bad:
                raise UploadError(problems, f"nothing imported into '{name}'",
                                  "fix the files, or import with --skip-bad to leave these rows out")
            kept_count = staging.count("not bad")
            if not kept_count:
                raise UploadError(problems or [Problem(notes_read.file, 0, "no notes")],
                                  f"nothing to import into '{name}': no usable notes")
            report.skipped = [tuple(p) for p in sorted(note_problems, key=lambda p: p.row)]
            report.pairs_skipped = [tuple(p) for p in sorted(pair_problems, key=lambda p: p.row)]
            report.ignored = [tuple(p) for p in image_source.problems]
            report.imported, report.pairs_imported = kept_count, len(pairs)
            report.images = staging.count("not bad and image is not null")
            # Counts add up by construction; say so loudly if a change ever breaks that.
            skipped_rows = {p.row for p in note_problems}
            assert report.read == report.imported + len(skipped_rows), "notes read != imported + skipped"
            assert report.pairs_read == report.pairs_imported + len({p.row for p in pair_problems})
            report.skipped = _one_per_row(report.skipped)
            report.pairs_skipped = _one_per_row(report.pairs_skipped)

            progress(0, 1, "writing")
            self._write(name, source, staging, pairs,
                        len(report.skipped) + len(report.pairs_skipped),
                        {"read": report.read, "pairs_read": report.pairs_read}, incoming)
            report.images_new = len(incoming.moved)
            progress(1, 1, "done")
            log.info("%s", report.summary())
            return report
        finally:
            if image_source is not None:
                image_source.close()
            staging.close()
            incoming.discard()

    def _write(self, name, source, staging: "_Staging", pairs, skipped, meta, incoming: "_IncomingImages") -> None:
        counts = staging.summary()
        with self._db() as db:
            conn = db.conn
            # The staged rows are copied by one INSERT ... SELECT inside the transaction: atomic for readers,
            # and the notes never pass through Python a second time.
            conn.execute("ATTACH DATABASE ? AS staging", [str(staging.path)])
            conn.execute("BEGIN IMMEDIATE")
            try:
                incoming.move_in()  # under the write lock: no delete or clean-up can run until COMMIT
                for (file,) in conn.execute("select distinct image from staging.notes where not bad and image is not null"):
                    if not (self.workspace.images_dir / file).exists():
                        raise WorkbenchError("image files vanished during the import (a dataset was deleted "
                                             "meanwhile); run the import again")
                try:
                    conn.execute("insert into datasets (name, source, created_at, notes, pairs, images, categories,"
                                 " skipped, meta) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 [name, source, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                                  counts["notes"], len(pairs), counts["images"], counts["categories"], skipped,
                                  json.dumps(meta)])
                except sqlite3.IntegrityError:
                    raise WorkbenchError(f"dataset '{name}' already exists (imported meanwhile)") from None
                conn.execute(
                    "insert into notes (dataset, note_id, position, title, content, topics, image, category)"
                    " select ?, note_id, row_number() over (order by line) - 1, title, content, topics, image, category"
                    " from staging.notes where not bad order by line", [name])
                conn.execute("insert into notes_fts(rowid, title) select rowid, title from notes where dataset = ?", [name])
                conn.executemany("insert into pairs (dataset, position, note_id_1, note_id_2) values (?, ?, ?, ?)",
                                 ((name, i, a, b) for i, (a, b) in enumerate(pairs)))
                conn.execute("COMMIT")
            except BaseException:
                incoming.move_out()  # still under the lock: nobody can have come to rely on these files
                conn.execute("ROLLBACK")
                raise
            finally:
                conn.execute("DETACH DATABASE staging")

    def remove_orphans(self) -> dict[str, int]:
        """Remove what imports killed mid-way left behind: incoming folders whose process is gone, and image
        files no note references, scratch databases of imports whose process is gone. Returns counts
        {"incoming": folders, "images": files, "scratch": files}."""
        removed = {"incoming": 0, "images": 0, "scratch": 0}
        for scratch in self.workspace.root.glob(".import-*.db*"):
            if not _owner_alive(scratch, scratch.name[len(".import-"):].split("-", 1)[0]):
                scratch.unlink(missing_ok=True)
                removed["scratch"] += 1
        incoming_root = self.workspace.root / INCOMING_DIR
        if incoming_root.is_dir():
            for folder in incoming_root.iterdir():
                if not _owner_alive(folder, folder.name.split("-", 1)[0]):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed["incoming"] += 1
        with self._db() as db:
            conn = db.conn
            conn.execute("BEGIN IMMEDIATE")  # imports move files in under this lock: none is half-way now
            try:
                referenced = {row[0] for row in conn.execute("select distinct image from notes where image is not null")}
                for entry in self.workspace.images_dir.iterdir():
                    if entry.name not in referenced and (entry.is_file() or entry.is_symlink()):
                        entry.unlink(missing_ok=True)
                        removed["images"] += 1
            finally:
                conn.execute("COMMIT")
        return removed


INCOMING_DIR = "incoming"


def _owner_alive(path: Path, pid_text: str) -> bool:
    """Whether the process that made `path` (its pid in the name) still runs; too old counts as gone."""
    try:
        pid = int(pid_text)
        if time.time() - path.stat().st_mtime > INCOMING_MAX_AGE_S:
            return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (ValueError, OSError):
        return False
    return True


class _IncomingImages:
    """The new image files of one import, kept out of images/ until the import's transaction moves them in."""

    def __init__(self, workspace: Workspace):
        self.images_dir = workspace.images_dir
        self.folder = workspace.root / INCOMING_DIR / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.files: set[str] = set()
        self.moved: list[str] = []

    def add(self, data: bytes, extension: str) -> str:
        """The content-addressed file name of normalised image bytes; written to the incoming folder unless
        images/ or this import has it already."""
        name = f"{hashlib.sha256(data).hexdigest()}.{extension}"
        if name not in self.files and not (self.images_dir / name).exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / name).write_bytes(data)
            self.files.add(name)
        return name

    def move_in(self) -> None:
        for name in sorted(self.files):
            target = self.images_dir / name
            if target.exists():  # the same picture arrived with another import meanwhile
                continue
            os.replace(self.folder / name, target)
            self.moved.append(name)

    def move_out(self) -> None:
        for name in self.moved:
            (self.images_dir / name).unlink(missing_ok=True)
        self.moved = []

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _Staging:
    """The checked rows of one import in a scratch sqlite file beside the workspace database (same disk, so
    ATTACH and the final copy are local), deleted when the import ends. Written in chunks without a journal:
    nothing in it outlives the import, so it needs no crash safety."""

    CHUNK = 10_000

    def __init__(self, folder: Path):
        # The pid in the name tells a later start-up whether the import that made it is still running.
        handle, name = tempfile.mkstemp(prefix=f".import-{os.getpid()}-", suffix=".db", dir=folder)
        os.close(handle)
        self.path = Path(name)
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = OFF")
        self.conn.execute("PRAGMA synchronous = OFF")
        self.conn.execute("create table notes (line integer primary key, note_id text, title text, content text,"
                          " topics text, image_ref text, image text, category text, bad integer default 0)")

    def add(self, records) -> None:
        insert = ("insert into notes (line, note_id, title, content, topics, image_ref, category)"
                  " values (?, ?, ?, ?, ?, ?, ?)")
        rows = ((r.line, r.note.note_id, r.note.title, r.note.content, json.dumps(r.note.topics, ensure_ascii=False),
                 r.image_ref, r.note.category) for r in records)
        while True:
            chunk = list(itertools.islice(rows, self.CHUNK))
            if not chunk:
                return
            self.conn.execute("BEGIN")
            self.conn.executemany(insert, chunk)
            self.conn.execute("COMMIT")

    def count(self, where: str) -> int:
        return self.conn.execute(f"select count(*) from notes where {where}").fetchone()[0]

    def image_refs(self):
        """(line, image cell) of the rows naming an image, in file order, fetched a page at a time."""
        last = 0
        while True:
            page = self.conn.execute("select line, image_ref from notes where line > ? and image_ref != ''"
                                     " order by line limit ?", [last, self.CHUNK]).fetchall()
            if not page:
                return
            yield from page
            last = page[-1][0]

    def set_images(self, stored: list[tuple[str, int]]) -> None:
        self.conn.execute("BEGIN")
        self.conn.executemany("update notes set image = ? where line = ?", stored)
        self.conn.execute("COMMIT")

    def mark_bad(self, lines) -> None:
        self.conn.execute("BEGIN")
        self.conn.executemany("update notes set bad = 1 where line = ?", ((line,) for line in lines))
        self.conn.execute("COMMIT")

    def summary(self) -> dict:
        notes, images, categories = self.conn.execute(
            "select count(*), count(distinct image), count(distinct nullif(category, '')) from notes where not bad"
        ).fetchone()
        return {"notes": notes, "images": images, "categories": categories}

    def close(self) -> None:
        self.conn.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def _one_per_row(problems: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """One entry per skipped row (reasons joined), so that read = imported + len(skipped)."""
    merged: dict[tuple[str, int], list[str]] = {}
    archive = []
    for file, row, reason in problems:
        if not row:
            archive.append((file, row, reason))
            continue
        merged.setdefault((file, row), []).append(reason)
    return [(file, row, "; ".join(reasons)) for (file, row), reasons in merged.items()] + archive


def _describe_source(notes_path: Path, pairs_file, images) -> str:
    parts = [notes_path.name]
    if pairs_file is not None:
        parts.append(Path(pairs_file).name)
    if images is not None:
        parts.append(Path(images).name)
    return " + ".join(parts)
