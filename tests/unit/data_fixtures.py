"""Real (malformed) upload files for the data tests, built in code so each test says what it feeds in."""
from __future__ import annotations

import csv
import io
import json
import stat
import struct
import zipfile
import zlib
from pathlib import Path

from PIL import Image


def png_bytes(size=(32, 24), color=(200, 30, 30, 255), mode="RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color if mode == "RGBA" else color[:3]).save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(size=(64, 48), color=(20, 40, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG", quality=90)
    return out.getvalue()


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A real, tiny PNG whose IHDR header claims `width` x `height` pixels (CRC fixed up)."""
    data = bytearray(png_bytes((1, 1)))
    # Signature (8) + IHDR length (4) + b"IHDR" (4), then width and height.
    struct.pack_into(">II", data, 16, width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    struct.pack_into(">I", data, 29, crc)
    return bytes(data)


def truncated_jpeg() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(out, format="JPEG", quality=95)
    data = out.getvalue()
    return data[: len(data) // 2]


def write_csv(path: Path, header: list[str], rows: list[list], encoding="utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    """A zip holding `entries` as given (names are not sanitised: `../x` stays `../x`), plus symlink entries."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


NOTE_HEADER = ["note_id", "title", "content", "image", "topics", "category"]


def good_upload(folder: Path, n: int = 6) -> tuple[Path, Path, Path]:
    """notes.csv, pairs.csv and images/ for `n` valid notes in two categories, pairs within categories."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        (images / f"img{i}.png").write_bytes(png_bytes(color=(i * 40 % 256, 100, 50, 255)))
        category = "animals@birds@" if i % 2 == 0 else "animals@cats@"
        rows.append([f"n{i}", f"Title {i}", f"content of note {i} #tag{i}#", f"img{i}.png", "", category])
    notes = write_csv(folder / "notes.csv", NOTE_HEADER, rows)
    pairs = write_csv(folder / "pairs.csv", ["note_id_1", "note_id_2"],
                      [[f"n{i}", f"n{i + 2}"] for i in range(n - 2)])
    return notes, pairs, images


def store_state(store) -> tuple:
    """Everything an import could change: datasets with counts, and the image files."""
    datasets = tuple((d.name, d.notes, d.pairs, d.images) for d in store.list_datasets())
    files = tuple(sorted(p.name for p in store.workspace.images_dir.iterdir()))
    return datasets, files
