"""build-openclipart on a small fixture tree shaped like Debian's packages, and the data CLI commands."""
from __future__ import annotations

import argparse
import csv
import io
import json

import pytest
from PIL import Image

from core.data import commands
from core.data.openclipart import build_openclipart, keep_topics, read_svg_metadata
from core.data.store import Store
from core.errors import WorkbenchError

try:
    from data_fixtures import png_bytes, write_csv
except ImportError:  # tests/ imported as a package
    from tests.unit.data_fixtures import png_bytes, write_csv

SVG = """<?xml version="1.0" encoding="UTF-8"?>
{doctype}<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" {extra}>
<metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:description>{description}</dc:description>
<dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject>
<dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator></cc:Work></rdf:RDF></metadata>
<rect width="10" height="10"/></svg>"""
# A billion-laughs DOCTYPE, as Illustrator-style files declare entities: it must be ignored, not expanded.
LAUGHS = """<!DOCTYPE svg [<!ENTITY ns_x "http://example.com/x"><!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
"""


def clip(root, category, name, title="", description="", keywords=(), png=None, svg=True, doctype="", extra=""):
    (root / "png" / category).mkdir(parents=True, exist_ok=True)
    (root / "svg" / category).mkdir(parents=True, exist_ok=True)
    (root / "png" / category / f"{name}.png").write_bytes(png if png is not None else png_bytes((40, 40), (10, 120, 10, 255)))
    if svg:
        text = SVG.format(doctype=doctype, extra=extra, title=title, description=description,
                          keywords="".join(f"<rdf:li>{k}</rdf:li>" for k in keywords))
        (root / "svg" / category / f"{name}.svg").write_text(text, encoding="utf-8")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "openclipart"
    transparent = io.BytesIO()
    Image.new("RGBA", (80, 40), (0, 0, 0, 0)).save(transparent, format="PNG")
    clip(root, "animals/birds", "parrot", "Parrot", "A green parrot", ["parrot", "birds", "animal", "tropical"],
         png=transparent.getvalue())
    clip(root, "animals/birds", "owl", "Owl", "", ["owl", "bird", "HASH(0x1234)"])
    clip(root, "animals/birds", "crow", "", "", ["crow"])  # no text: title from the file name
    clip(root, "animals/birds", "broken", "Broken", "", [], png=b"\x89PNG not really")
    clip(root, "animals/birds", "nosvg", svg=False)
    clip(root, "animals/cats", "tom", "Tom", "a cat", ["cats", "grey"])
    clip(root, "animals/cats", "felix", "Felix &amp; co", "black cat", ["felix"], doctype=LAUGHS,
         extra='xmlns:x="&ns_x;"')
    (root / "png" / "animals/cats" / "owl.png").symlink_to("../birds/owl.png")  # a linked copy
    clip(root, "unsorted", "misc", "Misc", "", [])
    clip(root, "shapes/lonely", "one", "Alone", "", [])
    return root


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_build_from_fixture_tree(tree, tmp_path):
    out = tmp_path / "out"
    stats = build_openclipart(out, root=tree, cap=10, seed=0, pairs_per_note=1, image_size=64, show_progress=False)
    notes = {n["note_id"]: n for n in read_csv(out / "notes.csv")}
    assert sorted(notes) == ["animals/birds/crow", "animals/birds/owl", "animals/birds/parrot",
                             "animals/cats/felix", "animals/cats/tom"]
    assert (stats.png_files, stats.linked_copies_skipped, stats.unsorted_dropped) == (10, 1, 1)
    assert (stats.no_svg, stats.png_unreadable, stats.single_note_categories, stats.title_from_file_name) == (1, 1, 1, 1)
    assert stats.category_sizes == {"animals/birds": 3, "animals/cats": 2}
    parrot = notes["animals/birds/parrot"]
    assert (parrot["title"], parrot["content"], parrot["topics"]) == ("Parrot", "A green parrot", "parrot, tropical")
    assert notes["animals/birds/owl"]["topics"] == "owl"
    assert notes["animals/birds/crow"]["title"] == "crow"
    assert notes["animals/cats/felix"]["title"] == "Felix & co" and notes["animals/cats/tom"]["topics"] == "grey"
    with Image.open(out / "images" / parrot["image"]) as image:
        assert image.mode == "RGB" and image.size == (64, 32)
        assert all(v > 245 for v in image.getpixel((5, 5)))  # transparency composited on white
    pairs = read_csv(out / "pairs.csv")
    degree = {}
    for pair in pairs:
        a, b = pair["note_id_1"], pair["note_id_2"]
        assert notes[a]["category"] == notes[b]["category"] and a != b
        degree[a] = degree.get(a, 0) + 1
        degree[b] = degree.get(b, 0) + 1
    assert max(degree.values()) == 1 and len(pairs) == stats.pairs == 2
    assert json.loads((out / "stats.json").read_text())["notes"] == 5

    again = tmp_path / "again"
    build_openclipart(again, root=tree, cap=10, seed=0, pairs_per_note=1, image_size=64, show_progress=False)
    assert (again / "notes.csv").read_bytes() == (out / "notes.csv").read_bytes()
    assert (again / "pairs.csv").read_bytes() == (out / "pairs.csv").read_bytes()

    # The output is an ordinary upload.
    store = Store(tmp_path / "ws")
    report = store.import_dataset("clips", out / "notes.csv", out / "pairs.csv", out / "images")
    assert report.imported == 5 and report.pairs_imported == 2
    assert store.categories("clips") == {"animals/birds": 3, "animals/cats": 2}


def test_cap_and_max_categories(tree, tmp_path):
    stats = build_openclipart(tmp_path / "o", root=tree, cap=2, seed=1, show_progress=False)
    assert stats.category_sizes == {"animals/birds": 2, "animals/cats": 2}
    assert stats.over_cap_dropped >= 1
    one = build_openclipart(tmp_path / "p", root=tree, cap=2, seed=1, max_categories=1, show_progress=False)
    assert one.categories == 1 and one.categories_not_chosen == 2  # of birds, cats, lonely (unsorted is dropped)


def test_missing_packages_and_helpers(tmp_path):
    with pytest.raises(WorkbenchError, match="sudo apt-get install openclipart-png openclipart-svg"):
        build_openclipart(tmp_path / "o", root=tmp_path / "nothing")
    assert keep_topics(["flat theme", "lemon_theme_icon", "0xdeadbeef", "kiwi"], "computer/icons/lemon-theme")[0] == ["flat theme", "kiwi"]
    svg = tmp_path / "x.svg"
    svg.write_text("<svg><title>Plain</title><g>", encoding="utf-8")  # no metadata, unfinished XML
    assert read_svg_metadata(svg) == ("Plain", "", [])


def run_cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="python -m core")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code = args.func(args) or 0
    except WorkbenchError as error:
        print(f"error: {error}")
        code = 2
    return code, capsys.readouterr().out


def test_cli_commands(tree, tmp_path, capsys):
    ws = str(tmp_path / "ws")
    code, out = run_cli(["build-openclipart", "--workspace", ws, "--root", str(tree), "--out", str(tmp_path / "oc"),
                         "--cap", "10", "--import-as", "clips"], capsys)
    assert code == 0 and "5 notes" in out and "imported 'clips'" in out
    code, out = run_cli(["datasets", "--workspace", ws], capsys)
    assert out.startswith("clips: 5 notes, 4 pairs, 2 images")  # identical fixture clips share one file

    notes = write_csv(tmp_path / "n.csv", ["note_id", "title", "content"], [["a", "t", "c"], ["a", "t", "c"]])
    code, out = run_cli(["import", "--workspace", ws, "--name", "dup", "--notes", str(notes)], capsys)
    assert code == 2 and "n.csv line 3: duplicate note_id 'a'" in out and out.count("\n") == 1
    report = tmp_path / "report.csv"
    code, out = run_cli(["import", "--workspace", ws, "--name", "dup", "--notes", str(notes), "--skip-bad",
                         "--report", str(report)], capsys)
    assert code == 0 and "imported 'dup': 1 of 2 notes" in out and "duplicate" in report.read_text()
    code, out = run_cli(["delete-dataset", "--workspace", ws, "dup"], capsys)
    assert code == 0
    code, out = run_cli(["delete-dataset", "--workspace", ws, "dup"], capsys)
    assert code == 2 and "unknown dataset 'dup'" in out
