"""Read notes and pairs files (CSV or JSONL, ours or NoteLLM's layout) into checked records.

Two kinds of trouble come out of here:
- problems with a whole file (unreadable, not UTF-8, missing or unknown columns): raised at once as an
  `UploadError`, whatever the skip policy, since no row of such a file can be trusted;
- problems with a row (duplicate id, empty note, overlong field, ...): returned as `Problem`s so that
  the importer can refuse the upload or, with skip-bad, skip just those rows.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.data.problems import Problem, UploadError
# The topic rules live with the note (a leaf every layer imports); the reader re-exports them.
from core.data.schema import (HASHTAG, MAX_TOPIC_CHARS, MAX_TOPICS, TAG_MARKUP, Note,  # noqa: F401
                              extract_topics, split_topics)

NOTE_COLUMNS = ("note_id", "title", "content", "image", "topics", "category")
REQUIRED_NOTE_COLUMNS = ("note_id", "title", "content")
PAIR_COLUMNS = ("note_id_1", "note_id_2")

# Other spellings accepted as they are: NoteLLM's own CSV layout and a few obvious ones.
NOTE_ALIASES = {
    "noteid": "note_id", "id": "note_id", "note": "note_id",
    "imgid": "image", "image_id": "image", "img": "image", "image_path": "image", "image_file": "image",
    "topic": "topics", "tags": "topics", "hashtags": "topics",
    "body": "content", "text": "content",
}
PAIR_ALIASES = {
    "noteid1": "note_id_1", "note_id1": "note_id_1", "id1": "note_id_1", "id_1": "note_id_1",
    "noteid2": "note_id_2", "note_id2": "note_id_2", "id2": "note_id_2", "id_2": "note_id_2",
}
EXPECTED_NOTES = "note_id,title,content,image[,topics][,category] (or NoteLLM's noteid,title,content,imgid,category)"
EXPECTED_PAIRS = "note_id_1,note_id_2 (or NoteLLM's noteid1,noteid2)"

# Fields beyond these lengths are a broken upload (a shifted column, a whole file in one cell), not a note.
csv.field_size_limit(64 * 1024 * 1024)


@dataclass(frozen=True)
class FieldLimits:
    note_id: int = 200
    title: int = 2_000
    content: int = 50_000
    topics: int = 2_000
    category: int = 500
    image: int = 1_000


@dataclass
class NoteRecord:
    """A notes-file row that passed the text checks; `image_ref` is the raw image cell ("" for none)."""

    line: int
    note: Note
    image_ref: str = ""


@dataclass
class NotesRead:
    file: str
    read: int = 0
    records: list[NoteRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)  # every note_id seen -> its first line, good row or not


@dataclass
class PairsRead:
    file: str
    read: int = 0
    pairs: list[tuple[int, str, str]] = field(default_factory=list)  # (line, note_id_1, note_id_2)
    problems: list[Problem] = field(default_factory=list)


def normalise_category(value: str) -> str:
    """`L1@L2@` (the reference's form) and `L1/L2` both become `L1/L2`."""
    parts = [p.strip() for p in re.split(r"[@/]", value or "") if p.strip()]
    return "/".join(parts)


def _is_jsonl(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return True
    if suffix in (".csv", ".tsv", ".txt"):
        return False
    return text.lstrip()[:1] in ("{", "[")


def map_columns(names, canonical, aliases, required, label, expected) -> dict[str, str]:
    """Raw column name -> canonical name; missing, unknown and duplicate columns are file problems."""
    mapping, problems, taken = {}, [], {}
    for raw in names:
        key = (raw or "").strip().lower().replace(" ", "_").replace("-", "_")
        name = key if key in canonical else aliases.get(key)
        if name is None:
            guess = difflib.get_close_matches(key, list(canonical) + list(aliases), n=1, cutoff=0.6)
            hint = f"; did you mean '{aliases.get(guess[0], guess[0])}'?" if guess else ""
            problems.append(Problem(label, 1, f"unknown column '{raw}'{hint} (expected {expected})"))
            continue
        if name in taken:
            problems.append(Problem(label, 1, f"columns '{taken[name]}' and '{raw}' both mean '{name}'"))
            continue
        taken[name] = raw
        mapping[raw] = name
    for name in required:
        if name not in taken:
            problems.append(Problem(label, 1, f"missing column '{name}' (expected {expected})"))
    if problems:
        raise UploadError(problems, f"{label} does not have the expected columns")
    return mapping


def _first_text(path: Path, label: str) -> str:
    """The first non-blank character of the file ("" for a blank file), read a block at a time."""
    try:
        with open(path, "rb") as raw:
            while True:
                block = raw.read(1 << 16)
                if not block:
                    return ""
                stripped = block.lstrip()
                if stripped.startswith(b"\xef\xbb\xbf"):  # a byte-order mark is not text
                    stripped = stripped[3:].lstrip()
                if stripped:
                    return stripped[:1].decode("latin-1")
    except OSError as error:
        raise UploadError([Problem(label, 0, f"cannot read the file ({error.strerror or error})")],
                          "cannot read the upload") from None


def _utf8_problems(path: Path, label: str) -> None:
    """Refuse a file that is not UTF-8, naming every line and byte at fault (read line by line)."""
    problems = []
    with open(path, "rb") as raw:
        for number, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                byte = line[error.start]
                problems.append(Problem(label, number, f"not UTF-8 text: byte 0x{byte:02x} at column {error.start + 1}"))
    raise UploadError(problems, f"{label} is not UTF-8 text",
                      "it looks like Latin-1 or Windows-1252; save it as UTF-8 and upload again")


def _records(path: Path, label: str, canonical, aliases, required, expected):
    """Yield (line, dict of canonical name -> value) or (line, Problem) for each record of the file.

    The file is read as a stream, so a million-row upload never sits in memory whole; a byte that is not
    UTF-8 anywhere in it refuses the whole file (the rows read before it are discarded by the importer)."""
    first = _first_text(path, label)
    if not first:
        raise UploadError([Problem(label, 0, "the file is empty")], f"{label} has no rows")
    jsonl = _is_jsonl(path, first)
    # JSONL lines end at "\n" only (a stray "\r" inside a value is not a line break); CSV keeps its own rules.
    handle = open(path, encoding="utf-8-sig", newline="\n" if jsonl else "")
    try:
        if jsonl:
            yield from _jsonl_records(handle, label, canonical, aliases, required, expected)
        else:
            yield from _csv_records(handle, label, canonical, aliases, required, expected,
                                    delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    except UnicodeDecodeError:
        _utf8_problems(path, label)
    finally:
        handle.close()


def _csv_records(text, label, canonical, aliases, required, expected, delimiter=","):
    """`text`: the whole file as a string, or an open text file (newline="") to stream."""
    reader = csv.reader(io.StringIO(text, newline="") if isinstance(text, str) else text, delimiter=delimiter)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as error:
        raise UploadError([Problem(label, 1, f"cannot read the CSV header ({error})")], f"{label} is not CSV") from None
    mapping = map_columns(header, canonical, aliases, required, label, expected)
    names = [mapping.get(raw) for raw in header]
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise UploadError([Problem(label, start, f"cannot parse CSV ({error})")], f"{label} is not valid CSV") from None
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield start, Problem(label, start, f"has {len(row)} fields but the header has {len(header)}"
                                               " (an unquoted comma or a missing cell?)")
            continue
        yield start, {name: cell for name, cell in zip(names, row) if name}


def _jsonl_records(text, label, canonical, aliases, required, expected):
    """`text`: the whole file as a string, or an open text file (newline="\\n") to stream."""
    unknown: dict[str, int] = {}
    for number, line in enumerate(text.split("\n") if isinstance(text, str) else text, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, Problem(label, number, f"not valid JSON ({error.msg} at column {error.colno})")
            continue
        if isinstance(obj, list) and len(canonical) == 2 and len(obj) == 2:
            obj = dict(zip(canonical, obj))
        if not isinstance(obj, dict):
            yield number, Problem(label, number, f"expected a JSON object, got {type(obj).__name__}")
            continue
        record = {}
        for raw, value in obj.items():
            key = str(raw).strip().lower()
            name = key if key in canonical else aliases.get(key)
            if name is None:
                unknown.setdefault(str(raw), number)
                continue
            record[name] = value
        yield number, record
    if unknown:
        problems = []
        for raw, number in unknown.items():
            guess = difflib.get_close_matches(raw.lower(), list(canonical) + list(aliases), n=1, cutoff=0.6)
            hint = f"; did you mean '{aliases.get(guess[0], guess[0])}'?" if guess else ""
            problems.append(Problem(label, number, f"unknown field '{raw}'{hint} (expected {expected})"))
        raise UploadError(problems, f"{label} has fields the workbench does not know")


def _text(record: dict, name: str, line: int, label: str, problems: list[Problem]) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problems.append(Problem(label, line, f"field '{name}' should be text, not {type(value).__name__}"))
        return ""
    return str(value)


def read_notes(path: str | Path, limits: FieldLimits = FieldLimits()) -> NotesRead:
    """Every checked record of the file in memory; `iter_notes` streams them instead."""
    result = NotesRead(file=Path(path).name)
    result.records.extend(iter_notes(path, result, limits))
    return result


def iter_notes(path: str | Path, result: NotesRead, limits: FieldLimits = FieldLimits()):
    """Yield the file's good rows as NoteRecords one at a time, counting rows and collecting row problems and
    every note id's first line in `result` (whose `records` stays empty), so memory holds the ids, not the notes."""
    path = Path(path)
    label = path.name
    yield from check_notes(_records(path, label, NOTE_COLUMNS, NOTE_ALIASES, REQUIRED_NOTE_COLUMNS, EXPECTED_NOTES),
                           label, result, limits)


def check_notes(rows, label: str, result: NotesRead, limits: FieldLimits = FieldLimits()):
    """The row checks of every notes format: `rows` yields (row number, {canonical column: value}) or
    (row number, Problem); good rows come out as NoteRecords, row problems and note ids go into `result`."""
    first_line = result.ids
    for line, record in rows:
        result.read += 1
        if isinstance(record, Problem):
            result.problems.append(record)
            continue
        problems: list[Problem] = []
        note_id = _text(record, "note_id", line, label, problems).strip()
        title = _text(record, "title", line, label, problems).strip()
        content = _text(record, "content", line, label, problems).strip()
        image = _text(record, "image", line, label, problems).strip()
        category = normalise_category(_text(record, "category", line, label, problems))
        raw_topics = record.get("topics")
        if raw_topics is not None and not isinstance(raw_topics, (str, list, tuple)):
            problems.append(Problem(label, line, f"field 'topics' should be text or a list, not {type(raw_topics).__name__}"))
            raw_topics = None
        topics = split_topics(raw_topics)
        for name, value in (("note_id", note_id), ("title", title), ("content", content),
                            ("category", category), ("image", image), ("topics", ",".join(topics))):
            limit = getattr(limits, name)
            if len(value) > limit:
                problems.append(Problem(label, line, f"{name} is {len(value):,} characters long, over the limit of {limit:,}"))
        if not note_id:
            problems.append(Problem(label, line, "empty note_id"))
        elif note_id in first_line:
            problems.append(Problem(label, line, f"duplicate note_id '{note_id}' (first on line {first_line[note_id]})"))
        else:
            first_line[note_id] = line
        if not title and not content:
            problems.append(Problem(label, line, "note has neither title nor content"))
        if problems:
            result.problems.extend(problems)
            continue
        content, topics = extract_topics(content, topics)
        note = Note(note_id=note_id, title=title, content=content, topics=topics, image=None, category=category)
        yield NoteRecord(line=line, note=note, image_ref=image)


def read_pairs(path: str | Path, max_id_chars: int = FieldLimits.note_id) -> PairsRead:
    """Pairs with their line numbers; only checks each row on its own (ids against notes come later)."""
    path = Path(path)
    label = path.name
    return check_pairs(_records(path, label, PAIR_COLUMNS, PAIR_ALIASES, PAIR_COLUMNS, EXPECTED_PAIRS), label,
                       max_id_chars)


def check_pairs(rows, label: str, max_id_chars: int = FieldLimits.note_id) -> PairsRead:
    """The row checks of every pairs format: `rows` yields (row number, {canonical column: value}) or
    (row number, Problem)."""
    result = PairsRead(file=label)
    first_line: dict[frozenset, int] = {}
    for line, record in rows:
        result.read += 1
        if isinstance(record, Problem):
            result.problems.append(record)
            continue
        problems: list[Problem] = []
        a = _text(record, "note_id_1", line, label, problems).strip()
        b = _text(record, "note_id_2", line, label, problems).strip()
        if not problems:
            if not a or not b:
                problems.append(Problem(label, line, "empty note id in the pair"))
            elif max(len(a), len(b)) > max_id_chars:
                problems.append(Problem(label, line, f"note id over {max_id_chars} characters"))
            elif a == b:
                problems.append(Problem(label, line, f"self-pair: '{a}' paired with itself"))
            else:
                key = frozenset((a, b))
                if key in first_line:
                    problems.append(Problem(label, line, f"duplicate pair ('{a}', '{b}') (first on line {first_line[key]},"
                                                         " in either order)"))
                else:
                    first_line[key] = line
        if problems:
            result.problems.extend(problems)
            continue
        result.pairs.append((line, a, b))
    return result
