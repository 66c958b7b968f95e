"""The bundled sample's real pictures through the bridges on the command line: import (progress in plain lines
when stderr is not a terminal), export, import the Parquet back: the same 600 notes, pairs and image bytes."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.cli import main
from core.data.store import Store
from core.workspace import REPO_ROOT

pytestmark = pytest.mark.integration
SAMPLE = REPO_ROOT / "data" / "sample"


def test_sample_round_trip_through_the_cli(tmp_path, capsys):
    workspace = str(tmp_path / "ws")
    assert main(["import", "--name", "sample", "--notes", str(SAMPLE / "notes.csv"), "--pairs",
                 str(SAMPLE / "pairs.csv"), "--images", str(SAMPLE / "images"), "--workspace", workspace]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # pytest's capture is no terminal: whole lines, not a redrawn bar
    assert "checking images: 0/600 items (0%)" in err

    out = tmp_path / "export"
    assert main(["export", "--dataset", "sample", "--out", str(out), "--format", "parquet",
                 "--workspace", workspace]) == 0
    notes = pq.read_table(out / "notes.parquet")
    assert notes.num_rows == 600 and notes.schema.metadata[b"huggingface"]

    assert main(["import", "--name", "again", "--notes", str(out / "notes.parquet"), "--pairs",
                 str(out / "pairs.parquet"), "--workspace", workspace]) == 0
    store = Store(workspace)
    before, after = store.notes("sample"), store.notes("again")
    assert [(n.note_id, n.title, n.content, n.topics, n.category) for n in after] == \
           [(n.note_id, n.title, n.content, n.topics, n.category) for n in before]
    assert [Path(n.image).read_bytes() for n in after] == [Path(n.image).read_bytes() for n in before]
    assert store.pairs("again") == store.pairs("sample")
