"""A warm neighbour query through the app's own path (core.workbench.Workbench.neighbours) at 20k notes.

The workspace is real: 20k text notes imported into the sqlite store, a run folder with a tiny NoteEncoder of
the real embedding width (64), and that run's on-disk vector cache filled with unit vectors under the run's
fingerprint (encoding 20k notes is measured by the encode section, not here). The first query loads the notes,
the vectors and builds the index; every later one is what a user clicking "Search" waits for: the freshness
checks (a stat of the weights, one sqlite read of the dataset's row), the faiss search, the hits' notes and the
query's known related notes.

    python -m bench.query_warm             # prints the figures, writes query_warm_ms_20k into results.json
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results.json")
KEY = "query_warm_ms_20k"


def build_workspace(root: Path, count: int, dim: int = 64, seed: int = 0):
    from core.data.store import Store
    from core.encode import VectorCache, note_hash
    from core.models.note_encoder import NoteEncoder, NoteEncoderConfig
    from core.runs import RunStore
    from core.workbench import Workbench
    from core.workspace import Workspace

    rng = np.random.default_rng(seed)
    workspace = Workspace.open(root / "ws")
    source = root / "source"
    source.mkdir()
    words = "red blue green bird cat tree house car star flower music map sun moon river city garden".split()
    with open(source / "notes.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["note_id", "title", "content", "image", "category"])
        for i in range(count):
            writer.writerow([f"n{i}", " ".join(rng.choice(words, 3)), " ".join(rng.choice(words, 12)), "",
                             f"c{i % 50}"])
    with open(source / "pairs.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["note_id_1", "note_id_2"])
        writer.writerows([f"n{i}", f"n{i + 1}"] for i in range(0, count - 1, 2))
    Store(workspace).import_dataset("bench", source / "notes.csv", source / "pairs.csv")

    runs = RunStore(workspace)
    model = NoteEncoder(NoteEncoderConfig.tiny("text", embedding_dim=dim), device="cpu")
    model.save_pretrained(runs.folder("bench-run"))
    runs.write("bench-run", {"run": "bench-run", "dataset": "bench", "variant": "text", "status": "finished",
                             "step": 1, "train": {"steps": 1}, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")})

    workbench = Workbench(workspace)
    notes = workbench.notes("bench")
    vectors = rng.standard_normal((len(notes), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cache = VectorCache(workspace.indexes_dir / "bench-run" / "bench", "both",
                        workbench.encoder_fingerprint("bench-run"))
    cache.save([n.note_id for n in notes], [note_hash(n, "both") for n in notes], vectors)
    return workspace


def run(count: int = 20_000, queries: int = 200, k: int = 10) -> dict:
    from core.workbench import Workbench

    with tempfile.TemporaryDirectory() as tmp:
        workspace = build_workspace(Path(tmp), count)
        workbench = Workbench(workspace)  # a fresh one: nothing in memory yet, as after a server start
        start = time.perf_counter()
        workbench.neighbours("bench-run", "bench", note_id="n0", k=k)
        cold_s = time.perf_counter() - start
        rng = np.random.default_rng(1)
        times = []
        for i in rng.integers(0, count, queries):
            start = time.perf_counter()
            # What the Search tab asks for one click: the query note, its neighbours, its known related notes.
            workbench.note("bench", f"n{i}")
            hits = workbench.neighbours("bench-run", "bench", note_id=f"n{i}", k=k)
            workbench.related("bench").get(f"n{i}", frozenset())
            times.append(time.perf_counter() - start)
            assert len(hits) == k
        ms = np.array(times) * 1e3
    return {KEY: float(np.median(ms)), "query_warm_p99_ms_20k": float(np.percentile(ms, 99)),
            "query_first_s_20k": cold_s, "notes": count, "queries": queries, "k": k}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.query_warm", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS), help="results.json to update (only its %s key)" % KEY)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    from core.runtime import configure_threads

    configure_threads()
    figures = run()
    print(json.dumps(figures, indent=2))
    if not args.no_write:
        # Read-modify-write of one key: the other sections' figures in the file stay as they are.
        path = Path(args.out)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[KEY] = figures[KEY]
        path.write_text(json.dumps(results, indent=2, default=float))
        print(f"wrote {KEY} = {figures[KEY]:.2f} ms into {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
