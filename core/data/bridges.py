"""Data bridges: notes from Parquet files and Hugging Face `save_to_disk` folders in, Parquet and CSV out.

Imports go through the store's one import (`Store.import_records`) with the upload path's own checks: the
columns are mapped by `readers.map_columns`, every row is checked by `readers.check_notes` / `check_pairs`,
and images are fetched by the upload's image sources and decoded under the same byte and pixel caps. So a
bad row is reported as file, row and reason, and nothing changes unless everything passes (or `skip_bad`).

Tables are read with pyarrow, a chunk at a time (Parquet row groups, Arrow record batches of a memory-mapped
file), so a large table never sits in memory as Python objects. The image column may hold
- bytes (binary), checked and decoded under the caps;
- a path (text), resolved only inside the upload folder, as a CSV's image cell is: no absolute paths, no `..`,
  no symbolic link leading out;
- a struct {bytes, path} as Hugging Face's Image feature writes it: the bytes when present, else the path.
Rows are counted from 1 (the first data row is row 1) across the table's chunks and, for a Hugging Face
folder, across its data files in the order `state.json` lists them; problems name them "line N".
"""
from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

from core.data.images import ALLOWED_FORMATS, ImageLimits, ImageProblem, ImageSource, decode_image, normalise_image, \
    open_images
from core.data.problems import Problem, UploadError
from core.data.readers import (EXPECTED_NOTES, EXPECTED_PAIRS, NOTE_ALIASES, NOTE_COLUMNS, PAIR_ALIASES, PAIR_COLUMNS,
                               REQUIRED_NOTE_COLUMNS, FieldLimits, NotesRead, PairsRead, check_notes, check_pairs,
                               map_columns, read_pairs)
from core.errors import WorkbenchError

PARQUET_SUFFIXES = (".parquet", ".pq")
# A column mapped to this is left out (a Hugging Face dataset's extra columns: labels, urls, ...).
IGNORED = "-"
# The image cell of a row whose image bytes are in the table itself; fetched from the table by row number.
EMBEDDED = "embedded image, row {row}"
EMBEDDED_PATTERN = re.compile(r"embedded image, row (\d+)")
BATCH_ROWS = 10_000


# ---------------------------------------------------------------------------------------------- tables
@dataclass
class _Chunk:
    first_row: int  # row number (from 1) of the chunk's first row
    rows: int
    read: Callable[[list[str]], "object"]  # column names -> pyarrow Table of those columns


@dataclass
class ArrowTable:
    """A table in chunks: Parquet row groups, or the Arrow IPC stream files of a Hugging Face folder."""
    label: str
    schema: "object"  # pyarrow.Schema
    chunks: list[_Chunk]
    folder: Path  # where relative image paths are resolved (below it only)
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(chunk.rows for chunk in self.chunks)

    def batches(self, columns: list[str]) -> Iterator[tuple[int, "object"]]:
        """(first row number, pyarrow Table of `columns`) at most BATCH_ROWS rows at a time."""
        for chunk in self.chunks:
            table = chunk.read(columns)
            for start in range(0, chunk.rows, BATCH_ROWS):
                yield chunk.first_row + start, table.slice(start, BATCH_ROWS)

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers = []


def _file_problem(label: str, reason: str, headline: str) -> UploadError:
    return UploadError([Problem(label, 0, reason)], headline)


def open_parquet(path: str | os.PathLike) -> ArrowTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    label = path.name
    if not path.is_file():
        raise _file_problem(label, "no such file", "cannot read the Parquet file")
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _file_problem(label, f"not a readable Parquet file ({error})", "cannot read the Parquet file") from None
    chunks, first = [], 1
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows

        def read(columns, group=group):
            try:
                return parquet.read_row_group(group, columns=columns)
            except (pa.ArrowException, OSError, ValueError) as error:
                raise _file_problem(label, f"cannot read row group {group} ({error})",
                                    "cannot read the Parquet file") from None

        chunks.append(_Chunk(first, rows, read))
        first += rows
    return ArrowTable(label, schema, chunks, path.resolve().parent, [parquet.close])


def _plain_child(folder: Path, name, what: str, label: str) -> Path:
    """`folder/name` for a name a file in the folder wrote (hostile): one plain component, no link leading out."""
    if not isinstance(name, str) or not name or name != PurePosixPath(name).name or name in (".", "..") \
            or "\\" in name or name.startswith("."):
        raise _file_problem(label, f"{what} '{name}' is not a plain name inside the folder",
                            "cannot read the Hugging Face folder")
    child = folder / name
    if folder.resolve() not in child.resolve().parents:
        raise _file_problem(label, f"{what} '{name}' is a link that leaves the folder",
                            "cannot read the Hugging Face folder")
    return child


def _read_json(path: Path, label: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _file_problem(label, f"{path.name} is not readable JSON ({error})",
                            "cannot read the Hugging Face folder") from None
    if not isinstance(data, dict):
        raise _file_problem(label, f"{path.name} is not a JSON object", "cannot read the Hugging Face folder")
    return data


def hf_data_files(folder: str | os.PathLike, split: str | None = None) -> tuple[Path, list[Path], str]:
    """(dataset folder, its Arrow files in order, label) of a `save_to_disk` folder; a DatasetDict's folder
    (dataset_dict.json and one folder per split) gives the split asked for, else `train`, else its only one."""
    folder = Path(folder)
    label = folder.name or str(folder)
    if not folder.is_dir():
        raise _file_problem(label, "no such folder", "cannot read the Hugging Face folder")
    if (folder / "dataset_dict.json").is_file():
        splits = _read_json(folder / "dataset_dict.json", label).get("splits")
        if not isinstance(splits, list) or not splits:
            raise _file_problem(label, "dataset_dict.json lists no splits", "cannot read the Hugging Face folder")
        if split is None:
            if "train" in splits:
                split = "train"
            elif len(splits) == 1:
                split = splits[0]
            else:
                raise _file_problem(label, f"choose a split: {', '.join(map(str, splits))}",
                                    "the Hugging Face folder holds several splits")
        if split not in splits:
            raise _file_problem(label, f"no split '{split}' (splits: {', '.join(map(str, splits))})",
                                "cannot read the Hugging Face folder")
        folder = _plain_child(folder, split, "split", label)
        label = f"{label}/{split}"
        if not folder.is_dir():
            raise _file_problem(label, "the split's folder is missing", "cannot read the Hugging Face folder")
    elif split is not None:
        raise _file_problem(label, f"split '{split}' asked for, but the folder is a single dataset (no dataset_dict.json)",
                            "cannot read the Hugging Face folder")
    if (folder / "state.json").is_file():
        entries = _read_json(folder / "state.json", label).get("_data_files")
        if not isinstance(entries, list):
            raise _file_problem(label, "state.json has no _data_files list", "cannot read the Hugging Face folder")
        names = [entry.get("filename") if isinstance(entry, dict) else entry for entry in entries]
    else:
        names = sorted(p.name for p in folder.glob("data-*.arrow"))
    files = [_plain_child(folder, name, "data file", label) for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise _file_problem(label, f"data file missing: {', '.join(missing[:5])}", "cannot read the Hugging Face folder")
    if not files:
        raise _file_problem(label, "no data-*.arrow files (a folder written by datasets' save_to_disk?)",
                            "cannot read the Hugging Face folder")
    return folder, files, label


def open_hf_folder(folder: str | os.PathLike, split: str | None = None) -> ArrowTable:
    """The Arrow files of a `save_to_disk` folder (IPC stream format), memory-mapped: no `datasets` needed."""
    import pyarrow as pa

    folder, files, label = hf_data_files(folder, split)
    table = ArrowTable(label, None, [], folder.resolve())
    first = 1
    try:
        for path in files:
            source = pa.memory_map(str(path))
            table.closers.append(source.close)
            try:
                data = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:  # written as an IPC file rather than a stream
                source.seek(0)
                try:
                    data = pa.ipc.open_file(source).read_all()
                except pa.ArrowException as error:
                    raise _file_problem(label, f"{path.name} is not an Arrow file ({error})",
                                        "cannot read the Hugging Face folder") from None
            if table.schema is None:
                table.schema = data.schema
            elif not data.schema.remove_metadata().equals(table.schema.remove_metadata()):
                raise _file_problem(label, f"{path.name} has other columns than {files[0].name}",
                                    "cannot read the Hugging Face folder")
            table.chunks.append(_Chunk(first, data.num_rows, lambda columns, data=data: data.select(columns)))
            first += data.num_rows
    except (OSError, pa.ArrowException) as error:
        table.close()
        raise _file_problem(label, f"cannot read the Arrow files ({error})", "cannot read the Hugging Face folder") \
            from None
    except BaseException:
        table.close()
        raise
    return table


# ---------------------------------------------------------------------------------------------- columns
def parse_column_mapping(items: Iterable[str] | dict | None) -> dict[str, str]:
    """`["caption=content", "label=-"]` or a dict -> {table column: workbench column or IGNORED}."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else [_split_mapping(item) for item in items]
    mapping = {}
    for source, target in pairs:
        source, target = str(source).strip(), str(target).strip()
        if target != IGNORED and target not in NOTE_COLUMNS:
            raise WorkbenchError(f"column mapping '{source}={target}': '{target}' is not a notes column "
                                 f"({', '.join(NOTE_COLUMNS)}, or {IGNORED} to leave the column out)")
        mapping[source] = target
    return mapping


def _split_mapping(item: str) -> tuple[str, str]:
    if "=" not in item or not item.split("=", 1)[0].strip():
        raise WorkbenchError(f"column mapping '{item}' should read TABLE_COLUMN=NOTES_COLUMN (or TABLE_COLUMN=-)")
    source, target = item.split("=", 1)
    return source, target


def _note_columns(names: list[str], mapping: dict[str, str], label: str) -> dict[str, str]:
    """Table column -> canonical notes column: the user's mapping first, then the upload format's names."""
    unknown = [source for source in mapping if source not in names]
    if unknown:
        raise UploadError([Problem(label, 0, f"the column mapping names '{source}', which is not a column "
                                             f"(columns: {', '.join(names)})") for source in unknown],
                          f"{label} does not have the mapped columns")
    kept = [name for name in names if mapping.get(name) != IGNORED]
    renamed = {name: mapping.get(name, name) for name in kept}
    canonical = map_columns(list(renamed.values()), NOTE_COLUMNS, NOTE_ALIASES, REQUIRED_NOTE_COLUMNS, label,
                            EXPECTED_NOTES + f"; map others with --column NAME=COLUMN or leave them out with NAME={IGNORED}")
    return {name: canonical[renamed[name]] for name in kept}


def _image_kind(field_type) -> str:
    """How the image column holds images: "bytes", "path" or "struct" ({bytes, path}); "" when it cannot."""
    import pyarrow as pa

    def binary(t):
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
            or getattr(pa.types, "is_binary_view", lambda _: False)(t)

    def text(t):
        return pa.types.is_string(t) or pa.types.is_large_string(t) \
            or getattr(pa.types, "is_string_view", lambda _: False)(t)

    if binary(field_type):
        return "bytes"
    if text(field_type):
        return "path"
    if pa.types.is_struct(field_type):
        fields = {field_type.field(i).name: field_type.field(i).type for i in range(field_type.num_fields)}
        bytes_ok = "bytes" not in fields or binary(fields["bytes"])
        path_ok = "path" not in fields or text(fields["path"])
        if bytes_ok and path_ok and fields.keys() & {"bytes", "path"}:
            return "struct"
    if pa.types.is_null(field_type):  # a column with no value at all: no image anywhere
        return "path"
    return ""


def _image_parts(column, kind: str):
    """(list of bool: the row's bytes are present, list of path or None) of one batch's image column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if kind == "bytes":
        present = pc.fill_null(pc.greater(pc.binary_length(column), 0), False).to_pylist()
        return present, [None] * len(column)
    if kind == "path":
        return [False] * len(column), column.cast(pa.string()).to_pylist() if len(column) else []
    names = [column.type.field(i).name for i in range(column.type.num_fields)]
    valid = column.is_valid()
    if "bytes" in names:
        bytes_column = column.field("bytes")
        present = pc.fill_null(pc.and_(valid, pc.greater(pc.binary_length(bytes_column), 0)), False).to_pylist()
    else:
        present = [False] * len(column)
    if "path" in names:
        paths = pc.if_else(valid, column.field("path"), pa.scalar(None, column.field("path").type)).to_pylist()
    else:
        paths = [None] * len(column)
    return present, paths


@dataclass
class _NotesTable:
    """A table's notes as the readers' (row, record) pairs; remembers which rows carry image bytes."""
    table: ArrowTable
    columns: dict[str, str]  # table column -> canonical
    image_column: str | None = None
    image_kind: str = ""
    embedded_rows: set[int] = field(default_factory=set)

    @classmethod
    def open(cls, table: ArrowTable, mapping: dict[str, str]) -> "_NotesTable":
        columns = _note_columns(list(table.schema.names), mapping, table.label)
        image_column = next((name for name, canonical in columns.items() if canonical == "image"), None)
        kind = ""
        if image_column is not None:
            field_type = table.schema.field(image_column).type
            kind = _image_kind(field_type)
            if not kind:
                raise _file_problem(table.label, f"column '{image_column}' holds {field_type}; an image column holds "
                                                 "bytes, a relative path, or a struct {bytes, path}",
                                    f"{table.label} has an image column of the wrong type")
        return cls(table, columns, image_column, kind)

    def rows(self) -> Iterator[tuple[int, dict | Problem]]:
        label = self.table.label
        text_columns = [name for name in self.columns if name != self.image_column]
        wanted = text_columns + ([self.image_column] if self.image_column else [])
        for first_row, batch in self.table.batches(wanted):
            values = {name: batch.column(name).to_pylist() for name in text_columns}
            if self.image_column:
                present, paths = _image_parts(batch.column(self.image_column), self.image_kind)
            for offset in range(batch.num_rows):
                row = first_row + offset
                record = {self.columns[name]: _cell(values[name][offset]) for name in text_columns}
                if self.image_column:
                    path = paths[offset]
                    if present[offset]:
                        record["image"] = EMBEDDED.format(row=row)
                        self.embedded_rows.add(row)
                    elif isinstance(path, str) and EMBEDDED_PATTERN.fullmatch(path.strip()):
                        yield row, Problem(label, row, f"image path '{path}' names no file (that form is kept for "
                                                       "images stored in the table)")
                        continue
                    else:
                        record["image"] = path
                yield row, record


def _cell(value):
    """A table value as the readers take it: a list loses its missing items (a null is no topic)."""
    if isinstance(value, list):
        return [item for item in value if item is not None]
    return value


class TableImages(ImageSource):
    """Images of a table: bytes read back from the table by row, paths from the upload folder's source."""

    def __init__(self, notes: _NotesTable, paths: ImageSource):
        self.notes = notes
        self.paths = paths
        self.label = notes.table.label
        self.problems = paths.problems
        self._chunk_index: int | None = None
        self._chunk_column = None

    def fetch(self, ref: str, limits: ImageLimits) -> bytes:
        match = EMBEDDED_PATTERN.fullmatch(ref)
        if match is None:
            return self.paths.fetch(ref, limits)
        row = int(match.group(1))
        if row not in self.notes.embedded_rows:
            raise ImageProblem(f"no image bytes in row {row}")
        buffer = self._value(row).as_buffer()  # measured before it is copied into Python bytes
        if buffer.size > limits.max_bytes:
            raise ImageProblem(f"image is {buffer.size:,} bytes, over the limit of {limits.max_bytes:,}")
        return buffer.to_pybytes()

    def _value(self, row: int):
        import pyarrow as pa

        for index, chunk in enumerate(self.notes.table.chunks):
            if chunk.first_row <= row < chunk.first_row + chunk.rows:
                break
        else:
            raise ImageProblem(f"no row {row} in {self.label}")
        if self._chunk_index != index:  # rows are fetched in order: one chunk's image column at a time
            column = chunk.read([self.notes.image_column]).column(0)
            self._chunk_column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            self._chunk_index = index
        value = self._chunk_column[row - chunk.first_row]
        if self.notes.image_kind == "struct":
            value = value["bytes"]
        if not value.is_valid:
            raise ImageProblem(f"no image bytes in row {row}")
        return value

    def close(self) -> None:
        self.paths.close()


# Metadata an image the workbench wrote itself may carry; anything else (EXIF, ICC profiles, text) is re-encoded.
_STORED_FORM_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "progressive", "progression"}


def keep_stored_form(data: bytes, limits: ImageLimits = ImageLimits()) -> tuple[bytes, str]:
    """`normalise_image`, except that an image already in the form the workspace stores (RGB JPEG or PNG within
    `limits.max_side`, no EXIF or other metadata) is kept byte for byte after a full decode under the caps: a
    re-imported export neither loses JPEG quality again nor duplicates the workspace's files."""
    from PIL import Image

    if len(data) > limits.max_bytes:
        raise ImageProblem(f"image is {len(data):,} bytes, over the limit of {limits.max_bytes:,}")
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as header:
            stored_form = (header.format in ("JPEG", "PNG") and header.mode == "RGB"
                           and max(header.size) <= limits.max_side and set(header.info) <= _STORED_FORM_INFO)
            extension = "jpg" if header.format == "JPEG" else "png"
    except Exception:  # noqa: BLE001 - whatever it is, normalise_image below reports it as an ImageProblem
        stored_form = False
    if not stored_form:
        return normalise_image(data, limits)
    decode_image(data, limits.max_pixels)  # the whole picture decodes (not truncated) under the pixel cap
    return data, extension


# ---------------------------------------------------------------------------------------------- pairs
def _pairs_from_table(table: ArrowTable, max_id_chars: int) -> PairsRead:
    canonical = map_columns(list(table.schema.names), PAIR_COLUMNS, PAIR_ALIASES, PAIR_COLUMNS, table.label,
                            EXPECTED_PAIRS)
    names = list(canonical)

    def rows():
        for first_row, batch in table.batches(names):
            values = {name: batch.column(name).to_pylist() for name in names}
            for offset in range(batch.num_rows):
                yield first_row + offset, {canonical[name]: values[name][offset] for name in names}

    return check_pairs(rows(), table.label, max_id_chars)


def read_any_pairs(path: str | os.PathLike, max_id_chars: int = FieldLimits.note_id) -> PairsRead:
    """Pairs from Parquet, a Hugging Face folder, or the upload format's CSV/JSONL."""
    path = Path(path)
    if path.is_dir():
        table = open_hf_folder(path)
    elif path.suffix.lower() in PARQUET_SUFFIXES:
        table = open_parquet(path)
    elif path.is_file():
        return read_pairs(path, max_id_chars)
    else:
        raise WorkbenchError(f"pairs file not found: {path}")
    try:
        return _pairs_from_table(table, max_id_chars)
    finally:
        table.close()


# ---------------------------------------------------------------------------------------------- imports
def table_format(notes: str | os.PathLike) -> str | None:
    """"parquet" or "hf" for what the bridges import, None for the upload format's CSV/JSONL."""
    path = Path(notes)
    if path.is_dir():
        return "hf"
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return "parquet"
    return None


def import_table(store, name: str, notes: str | os.PathLike, pairs: str | os.PathLike | None = None,
                 images: str | os.PathLike | None = None, columns: Iterable[str] | dict | None = None,
                 split: str | None = None, skip_bad: bool = False, progress=None, source: str | None = None):
    """Import a Parquet notes file or a Hugging Face `save_to_disk` folder (`notes`) with pairs from Parquet,
    CSV, JSONL or another such folder. `columns` maps table columns to notes columns ("caption=content",
    "label=-" to leave one out); `images` is where relative image paths point (default: the table's folder
    and its images/ subfolder). Returns the store's ImportReport; UploadError on bad input (nothing changed)."""
    kind = table_format(notes)
    if kind is None:
        raise WorkbenchError(f"{Path(notes).name}: expected a .parquet file or a Hugging Face save_to_disk folder")
    if split is not None and kind != "hf":
        raise WorkbenchError("--split applies to Hugging Face folders only")
    mapping = parse_column_mapping(columns)
    if pairs is not None and not Path(pairs).exists():
        raise WorkbenchError(f"pairs file not found: {pairs}")
    table = open_hf_folder(notes, split) if kind == "hf" else open_parquet(notes)
    try:
        notes_table = _NotesTable.open(table, mapping)
        anchor = table.folder / "notes"  # open_images looks beside this (name unused) and in its images/

        def records(result: NotesRead):
            return check_notes(notes_table.rows(), table.label, result, store.field_limits)

        parts = [table.label] + [Path(p).name for p in (pairs, images) if p is not None]
        return store.import_records(
            name, table.label, records,
            (lambda: read_any_pairs(pairs, store.field_limits.note_id)) if pairs is not None else None,
            lambda: TableImages(notes_table, open_images(images, anchor)), skip_bad=skip_bad, progress=progress,
            source=source or " + ".join(parts), normalise=keep_stored_form)
    finally:
        table.close()


def import_parquet(store, name: str, notes, pairs=None, images=None, columns=None, skip_bad: bool = False,
                   progress=None):
    if table_format(notes) != "parquet":
        raise WorkbenchError(f"{Path(notes).name} is not a .parquet file")
    return import_table(store, name, notes, pairs, images, columns, None, skip_bad, progress)


def import_hf(store, name: str, folder, pairs=None, images=None, columns=None, split: str | None = None,
              skip_bad: bool = False, progress=None):
    if table_format(folder) != "hf":
        raise WorkbenchError(f"{folder} is not a folder (a Hugging Face save_to_disk folder)")
    return import_table(store, name, folder, pairs, images, columns, split, skip_bad, progress)
