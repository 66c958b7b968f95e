"""Build a real multimodal dataset from Debian's openclipart-png and openclipart-svg packages.

One note per PNG (its real file: the packages link many files into a second folder, and those links are
skipped so that no picture sits in two categories), with text from the SVG of the same name:
- title: the SVG's dc:title (cc:Work), else its <title>, else the file name;
- content: dc:description; topics: dc:subject keywords, minus those that only repeat the note's own folder
  names (they would leak the label the pairs are built from), at most 10 of at most 16 characters;
- category: the folder path (`animals/birds`); related pairs: notes of the same folder.
The raw package is lopsided (`shapes/stars` alone holds ~1,400 near-identical stars), so every folder is
capped at `cap` notes (seeded sample), `unsorted` and folders left with one note are dropped, and each note
gets at most `pairs_per_note` partners (seeded). Transparent images are composited on white.

The output folder is in the upload format (notes.csv, pairs.csv, images/), plus stats.json, so it goes
through the same import path as any upload.

SVG is parsed with the standard library only after removing any DOCTYPE (no entity can then expand) and
only up to the end of its <metadata>, with a size limit.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import random
import re
import shutil
import warnings
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from core.data.images import to_rgb
from core.data.readers import MAX_TOPIC_CHARS, MAX_TOPICS
from core.errors import WorkbenchError

DEFAULT_ROOT = Path("/usr/share/openclipart")
INSTALL_HINT = "sudo apt-get install openclipart-png openclipart-svg"
MAX_SVG_BYTES = 8 * 1024 * 1024
MAX_PNG_BYTES = 20 * 1024 * 1024
MAX_PNG_PIXELS = 40_000_000
DROPPED_FOLDERS = ("unsorted",)
# Keywords that carry no content in this collection (the packaging's own tags).
NOISE_KEYWORDS = {"unsorted", "clip art", "clipart", "image", "media", "public domain", "svg", "png", "hash"}
# Some descriptions are a Perl reference printed by the packaging scripts, not text.
NOISE_DESCRIPTION = re.compile(r"^(HASH|ARRAY)\(0x[0-9a-f]+\)$")
NOISE_KEYWORD = re.compile(r"^(0x[0-9a-f]+|(hash|array)\(0x[0-9a-f]+\))$")

_DOCTYPE = re.compile(rb"<!DOCTYPE[^\[>]*(\[.*?\])?\s*>", re.DOTALL | re.IGNORECASE)
_ENTITY = re.compile(rb"&([A-Za-z_][\w.-]*);")
_PREDEFINED = {b"amp", b"lt", b"gt", b"quot", b"apos"}


class SvgProblem(Exception):
    pass


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _clean_text(element) -> str:
    return re.sub(r"\s+", " ", "".join(element.itertext())).strip()


def read_svg_metadata(path: Path, max_bytes: int = MAX_SVG_BYTES) -> tuple[str, str, list[str]]:
    """(title, description, keywords) of an SVG; SvgProblem when it is too big or not XML."""
    size = path.stat().st_size
    if size > max_bytes:
        raise SvgProblem(f"too big ({size:,} bytes)")
    data = _DOCTYPE.sub(b"", path.read_bytes(), count=1)
    # With the DOCTYPE gone, entity references would be errors; they only ever name namespace URIs here.
    data = _ENTITY.sub(lambda m: m.group(0) if m.group(1) in _PREDEFINED else b"urn:x-entity:" + m.group(1), data)
    parser = ET.XMLPullParser(events=("start", "end"))
    depth, svg_title, metadata = 0, "", None
    try:
        for offset in range(0, len(data), 65536):
            parser.feed(data[offset:offset + 65536])
            for event, element in parser.read_events():
                if event == "start":
                    depth += 1
                    continue
                depth -= 1
                name = _local(element.tag)
                if name == "title" and depth == 1 and not svg_title:
                    svg_title = _clean_text(element)
                elif name == "metadata" and metadata is None:
                    metadata = element
            if metadata is not None:
                break
        else:
            parser.close()
    except ET.ParseError as error:
        if metadata is None and not svg_title:  # broken after the parts we read: keep what was read
            raise SvgProblem(f"not readable XML ({error})") from None
    title, description, keywords = "", "", []
    if metadata is not None:
        work = next((e for e in metadata.iter() if _local(e.tag) == "Work"), metadata)
        for child in work:
            name = _local(child.tag)
            if name == "title" and not title:
                title = _clean_text(child)
            elif name == "description" and not description:
                description = _clean_text(child)
            elif name == "subject":
                items = [e for e in child.iter() if _local(e.tag) == "li"] or [child]
                for item in items:
                    keywords += [k.strip() for k in re.split(r"[,;]", _clean_text(item)) if k.strip()]
    return title or svg_title, description, keywords


def _word_forms(word: str) -> set[str]:
    word = word.lower().replace("_", " ").replace("-", " ").strip()
    forms = {word, word.replace(" ", "")}
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s"):
        forms.add(word[:-1])
    forms |= {word + "s", word + "es"}
    return forms


def label_words(category: str) -> set[str]:
    """Keyword forms that only repeat a folder name of `category` (the label leak to drop)."""
    parts = category.split("/")
    words = set()
    for part in parts:
        words |= _word_forms(part)
        for piece in re.split(r"[_\-\s]+", part):
            if piece:
                words |= _word_forms(piece)
    words |= _word_forms(" ".join(parts))
    return words


def keep_topics(keywords: list[str], category: str) -> tuple[list[str], int]:
    """Topics from keywords: label leaks and noise dropped, case-insensitive duplicates merged, the
    reference's limits applied. Returns (topics, how many keywords were dropped as label leaks)."""
    leaks = label_words(category)
    topics, seen, leaked = [], set(), 0
    for keyword in keywords:
        key = re.sub(r"\s+", " ", keyword.lower().replace("_", " ")).strip()
        words = re.split(r"[\s\-]+", key)
        if key in leaks or key.replace(" ", "") in leaks or (words and all(w in leaks for w in words if w)):
            leaked += 1  # made only of the note's folder names: it would give the label away
            continue
        if (not key or key in NOISE_KEYWORDS or NOISE_KEYWORD.match(key) or key in seen
                or len(keyword) > MAX_TOPIC_CHARS or "#" in keyword):
            continue
        seen.add(key)
        topics.append(re.sub(r"[_\s]+", " ", keyword).strip())
        if len(topics) == MAX_TOPICS:
            break
    return topics, leaked


def render_png(path: Path, image_size: int, quality: int) -> bytes:
    """The PNG composited on white, longest side at most `image_size`, as JPEG bytes."""
    if path.stat().st_size > MAX_PNG_BYTES:
        raise SvgProblem("png too big in bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked just below
        image = Image.open(path, formats=("PNG",))
    with image:
        width, height = image.size
        if width * height > MAX_PNG_PIXELS:
            raise SvgProblem(f"png too big ({width}x{height} pixels)")
        image.load()
        rgb = to_rgb(image)
    rgb.thumbnail((image_size, image_size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def degree_capped_pairs(note_ids: list[str], per_note: int, rng: random.Random) -> list[tuple[str, str]]:
    """Random pairs among `note_ids`, each note in at most `per_note` of them (close to exactly that)."""
    candidates = list(itertools.combinations(note_ids, 2))
    rng.shuffle(candidates)
    degree: Counter = Counter()
    pairs = []
    for a, b in candidates:
        if degree[a] < per_note and degree[b] < per_note:
            degree[a] += 1
            degree[b] += 1
            pairs.append((a, b) if rng.random() < 0.5 else (b, a))
    return pairs


@dataclass
class BuildStats:
    png_files: int = 0
    linked_copies_skipped: int = 0  # PNGs that are links to a file in another folder
    unsorted_dropped: int = 0
    over_cap_dropped: int = 0
    no_svg: int = 0
    svg_unreadable: int = 0
    svg_too_big: int = 0
    png_unreadable: int = 0
    png_too_big: int = 0
    single_note_categories: int = 0
    single_note_notes_dropped: int = 0
    categories_not_chosen: int = 0  # left out by --max-categories
    notes_not_chosen: int = 0
    title_from_file_name: int = 0
    with_description: int = 0
    with_topics: int = 0
    leaking_keywords_dropped: int = 0
    notes: int = 0
    pairs: int = 0
    categories: int = 0
    image_bytes: int = 0
    category_sizes: dict[str, int] = field(default_factory=dict)  # kept notes per category, largest first
    raw_category_sizes: dict[str, int] = field(default_factory=dict)  # before capping and dropping

    def summary(self) -> str:
        return (f"{self.notes} notes, {self.pairs} pairs, {self.categories} categories, "
                f"{self.image_bytes / 1e6:.1f} MB of images; from {self.png_files} PNG files: skipped "
                f"{self.linked_copies_skipped} linked copies, {self.unsorted_dropped} unsorted, "
                f"{self.over_cap_dropped} over the cap, {self.no_svg} without SVG, "
                f"{self.svg_unreadable + self.svg_too_big} unreadable/huge SVG, "
                f"{self.png_unreadable + self.png_too_big} unreadable/huge PNG, "
                f"{self.single_note_notes_dropped} in single-note categories, {self.notes_not_chosen} in categories "
                f"not chosen; {self.leaking_keywords_dropped} label-leaking keywords dropped")


def _choose_categories(categories: list[str], limit: int, rng: random.Random) -> list[str]:
    """Up to `limit` categories, round-robin over top-level folders (seeded) so the choice is varied."""
    by_top: dict[str, list[str]] = defaultdict(list)
    shuffled = sorted(categories)
    rng.shuffle(shuffled)
    for category in shuffled:
        by_top[category.split("/")[0]].append(category)
    tops = sorted(by_top)
    rng.shuffle(tops)
    chosen = []
    while len(chosen) < limit and any(by_top.values()):
        for top in tops:
            if by_top[top] and len(chosen) < limit:
                chosen.append(by_top[top].pop(0))
    return chosen


def build_openclipart(out: str | Path, root: str | Path = DEFAULT_ROOT, cap: int = 150, seed: int = 0,
                      pairs_per_note: int = 5, image_size: int = 512, quality: int = 90,
                      max_categories: int | None = None, min_category_size: int = 2,
                      show_progress: bool = True) -> BuildStats:
    root, out = Path(root), Path(out)
    png_root, svg_root = root / "png", root / "svg"
    if not png_root.is_dir() or not svg_root.is_dir():
        raise WorkbenchError(f"openclipart is not installed (no {png_root} and {svg_root}); install it with: {INSTALL_HINT}")
    if cap < 2:
        raise WorkbenchError("--cap must be at least 2 (pairs need two notes in a category)")
    stats = BuildStats()

    by_category: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(png_root.rglob("*.png")):
        stats.png_files += 1
        if path.is_symlink():
            stats.linked_copies_skipped += 1
            continue
        category = path.parent.relative_to(png_root).as_posix()
        if category == "." or category.split("/")[0] in DROPPED_FOLDERS:
            stats.unsorted_dropped += 1
            continue
        by_category[category].append(path)
    stats.raw_category_sizes = dict(sorted(((c, len(p)) for c, p in by_category.items()), key=lambda kv: (-kv[1], kv[0])))

    categories = sorted(by_category)
    if max_categories:
        eligible = [c for c in categories if len(by_category[c]) >= cap]  # categories that fill the cap
        chosen = set(_choose_categories(eligible, max_categories, random.Random(f"{seed}:categories")))
        for category in categories:
            if category not in chosen:
                stats.categories_not_chosen += 1
                stats.notes_not_chosen += len(by_category[category])
        categories = [c for c in categories if c in chosen]

    if out.exists():
        shutil.rmtree(out / "images", ignore_errors=True)
    (out / "images").mkdir(parents=True, exist_ok=True)

    from core.progress import progress_bar

    work = sum(min(len(by_category[c]), cap) for c in categories)
    bar = progress_bar(total=work, desc="openclipart", unit="note", disable=not show_progress)

    notes: list[dict] = []
    kept_by_category: dict[str, list[str]] = {}
    for category in categories:
        files = list(by_category[category])
        random.Random(f"{seed}:{category}").shuffle(files)
        kept: list[dict] = []
        for index, path in enumerate(files):
            if len(kept) >= cap:
                stats.over_cap_dropped += len(files) - index
                break
            note = _make_note(path, category, png_root, svg_root, out, image_size, quality, stats)
            if bar:
                bar.update(1)
            if note:
                kept.append(note)
        if len(kept) < min_category_size:
            stats.single_note_categories += 1
            stats.single_note_notes_dropped += len(kept)
            for note in kept:
                (out / "images" / note["image"]).unlink(missing_ok=True)
            continue
        notes.extend(kept)
        kept_by_category[category] = [n["note_id"] for n in kept]
    if bar:
        bar.close()

    pairs = []
    for category, ids in kept_by_category.items():
        pairs += degree_capped_pairs(ids, pairs_per_note, random.Random(f"{seed}:pairs:{category}"))
    random.Random(f"{seed}:order").shuffle(pairs)
    random.Random(f"{seed}:notes").shuffle(notes)

    kept_notes = [n for n in notes]
    stats.notes, stats.pairs, stats.categories = len(kept_notes), len(pairs), len(kept_by_category)
    stats.with_description = sum(1 for n in kept_notes if n["content"])
    stats.with_topics = sum(1 for n in kept_notes if n["topics"])
    stats.category_sizes = dict(sorted(((c, len(i)) for c, i in kept_by_category.items()), key=lambda kv: (-kv[1], kv[0])))
    stats.image_bytes = sum((out / "images" / n["image"]).stat().st_size for n in kept_notes)

    with open(out / "notes.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["note_id", "title", "content", "image", "topics", "category"])
        writer.writeheader()
        for note in kept_notes:
            writer.writerow({**note, "topics": ", ".join(note["topics"])})
    with open(out / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["note_id_1", "note_id_2"])
        writer.writerows(pairs)
    settings = {"cap": cap, "seed": seed, "pairs_per_note": pairs_per_note, "image_size": image_size,
                "quality": quality, "max_categories": max_categories, "root": str(root)}
    (out / "stats.json").write_text(json.dumps({"settings": settings, **stats.__dict__}, indent=1) + "\n")
    return stats


def _make_note(path: Path, category: str, png_root: Path, svg_root: Path, out: Path, image_size: int,
               quality: int, stats: BuildStats) -> dict | None:
    svg = svg_root / category / (path.stem + ".svg")
    if not svg.is_file():
        stats.no_svg += 1
        return None
    try:
        title, description, keywords = read_svg_metadata(svg)
    except SvgProblem as problem:
        if str(problem).startswith("too big"):
            stats.svg_too_big += 1
        else:
            stats.svg_unreadable += 1
        return None
    except OSError:
        stats.svg_unreadable += 1
        return None
    try:
        jpeg = render_png(path, image_size, quality)
    except SvgProblem:
        stats.png_too_big += 1
        return None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        stats.png_unreadable += 1
        return None
    if NOISE_DESCRIPTION.match(description):
        description = ""
    if not title and not description:
        title = re.sub(r"[_\s]+", " ", path.stem).strip()
        stats.title_from_file_name += 1
    topics, leaked = keep_topics(keywords, category)
    stats.leaking_keywords_dropped += leaked
    note_id = f"{category}/{path.stem}"
    image = note_id.replace("/", "__") + ".jpg"
    (out / "images" / image).write_bytes(jpeg)
    return {"note_id": note_id, "title": title[:500], "content": description[:5000], "image": image,
            "topics": topics, "category": category}
