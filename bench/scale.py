"""Scale benchmarks: one machine up to a million notes (`make bench-scale`).

- import: a generated text-only notes CSV of N rows through `python -m core import` in a child process; its
  rate and its peak resident memory (the child's own maxrss, from wait4).
- index: vectors drawn from a Gaussian mixture fitted to real note vectors (the bundled sample encoded by
  the zero-shot text baseline, `zs-text`), at 100k and N; the index core.index.build_index chooses, its build
  time and memory, its tuned search breadth, recall@10 against exact on other queries than the tuning ones,
  and the latency of VectorIndex.search one query at a time (the app's path, exclusions and ties included);
  the same for IVF-PQ (what `auto` picks past the memory budget), re-scoring from the memmapped vector file.
  The same on the real vectors themselves, with IVF forced (they are too few for `auto` to leave exact).
- map: core.analysis.projection.compute_projection (UMAP on a 5k sample, the rest placed) at 100k and N.
- picker: Store.search_notes on the imported N-note dataset (empty, id, id prefix, title words, no match).
- encode: `python -m core encode` of the sample with `zs-text`, one process (two threads) and two processes
  under torchrun (one thread each), notes per second of encoding.

Writes the "scale" key of bench/results.json (read-modify-write; other keys are left as they are).
    python -m bench.scale                 # 100k and 1M (about 15 minutes on 2 cores; ~6 GB of /tmp)
    python -m bench.scale --quick         # 20k and 50k, a smoke run
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("results.json")
KEY = "scale"
TARGETS = {"import_peak_rss_gb_1m": ("<=", 2.0), "search_p50_ms_1m": ("<=", 5.0), "recall10_1m": (">=", 0.95),
           "map_s_1m": ("<=", 60.0), "picker_ms_1m": ("<=", 300.0)}


def label(size: int) -> str:
    return f"{size // 1_000_000}m" if size >= 1_000_000 and size % 1_000_000 == 0 else f"{size // 1000}k"


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def run_child(argv: list[str], extra_env: dict | None = None, timeout: float = 3600) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS in GB of that child alone)."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=ROOT, env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    stdout, stderr = child.communicate(timeout=timeout)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} failed: {stderr[-2000:]}")
    # communicate() reaped the child: its maxrss is in RUSAGE_CHILDREN only when it was the largest so far,
    # so every child is run through `rss_wrapper` instead, which prints its own peak.
    rss = next((float(line.split()[1]) for line in stderr.splitlines() if line.startswith("PEAK_RSS_KB")), 0.0)
    return stdout, wall, rss / 1024 ** 2


def wrapped(argv: list[str]) -> list[str]:
    """Run `argv` (a python -m ... command) under a wrapper that reports the peak RSS of it and its children."""
    script = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
              "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
              "sys.exit(r.returncode)")
    return [sys.executable, "-c", script, *argv]


def write_notes_csv(path: Path, count: int, seed: int = 0) -> None:
    """A text-only upload: ids n0..n{count-1}, titles of 5 words and contents of 35 from a 5,000-word
    vocabulary, a topic and a two-level category."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(5000)])
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["note_id", "title", "content", "image", "topics", "category"])
        for start in range(0, count, 50_000):
            block = rng.integers(0, 5000, size=(min(50_000, count - start), 40))
            for offset, picks in enumerate(block):
                chosen = words[picks]
                writer.writerow([f"n{start + offset}", " ".join(chosen[:5]), " ".join(chosen[5:]), "",
                                 f"t{picks[0] % 50}", f"c{picks[1] % 20}/s{picks[2] % 10}"])


def index_bytes(index) -> int:
    """Memory the faiss index holds (codes, ids, graph links); the process's RSS would also count the pages of
    the memmapped vector file that building it read."""
    import faiss

    inner, count = index.index, index.index.ntotal
    if isinstance(inner, faiss.IndexIVF):
        return count * (inner.code_size + 8) + inner.nlist * index.dim * 4
    if isinstance(inner, faiss.IndexHNSW):
        return count * index.dim * 4 + inner.hnsw.neighbors.size() * 4
    return count * index.dim * 4


# ------------------------------------------------------------------------------------------ sections
def bench_import(work: Path, size: int) -> dict:
    notes = work / f"notes-{label(size)}.csv"
    start = time.perf_counter()
    write_notes_csv(notes, size)
    generate_s = time.perf_counter() - start
    workspace = work / "ws"
    out, wall, peak = run_child(wrapped([sys.executable, "-m", "core", "import", "--workspace", str(workspace),
                                         "--name", f"scale-{label(size)}", "--notes", str(notes)]))
    assert f"{size} of {size} notes" in out, out
    result = {"notes": size, "csv_mb": notes.stat().st_size / 1024 ** 2, "generate_s": generate_s,
              "import_s": wall, "import_notes_per_s": size / wall, "import_peak_rss_gb": peak,
              "db_mb": (workspace / "workbench.db").stat().st_size / 1024 ** 2}
    notes.unlink()
    return result


def bench_picker(work: Path, size: int) -> dict:
    from core.data.store import Store

    store = Store(work / "ws")
    dataset = f"scale-{label(size)}"
    queries = ["", f"n{size // 2}", f"n{size // 3}"[:4], "w12", "w4999 w1", "w123 w456", "zebra", "n"]
    store.search_notes(dataset, "")  # the connection's first use
    times = {}
    for query in queries:
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            found = store.search_notes(dataset, query)
            runs.append((time.perf_counter() - start) * 1e3)
        times[query or "(empty)"] = {"median_ms": float(np.median(runs)), "found": len(found)}
    medians = [t["median_ms"] for t in times.values()]
    return {"by_query": times, "p50_ms": float(np.median(medians)), "max_ms": float(max(medians))}


def real_vectors(work: Path) -> np.ndarray:
    """The bundled sample encoded by zs-text through the workbench (cached in the bench workspace)."""
    from core.data.sample import ensure_sample_dataset
    from core.workbench import Workbench

    workspace = work / "sample-ws"
    ensure_sample_dataset(workspace)
    _, matrix = Workbench(workspace).dataset_vectors("zs-text", "sample", modality="text")
    return np.asarray(matrix, dtype=np.float32)


def search_latency(index, vectors: np.ndarray, queries: int = 300, k: int = 10) -> dict:
    rows = np.random.default_rng(11).choice(len(vectors), queries, replace=False)
    index.search(vectors[rows[:1]], k)
    times = []
    for row in rows:
        query = np.asarray(vectors[row:row + 1])
        start = time.perf_counter()
        index.search(query, k, exclude=[{index.ids[row]}])
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)), "queries": queries}


def bench_index(vectors: np.ndarray, kind: str = "auto") -> dict:
    from core.index import build_index, exact_neighbours

    ids = [str(i) for i in range(len(vectors))]
    start = time.perf_counter()
    index = build_index(ids, vectors, kind=kind)
    build_s = time.perf_counter() - start
    # Recall on queries the tuning did not see (another seed).
    rows, sample, truth = exact_neighbours(vectors, 300, 10, seed=97)
    result = {"kind": index.kind, "nlist": index.nlist, "breadth": index.breadth, "build_s": build_s,
              "index_gb": index_bytes(index) / 1024 ** 3, "recall10_tuning": index.tuning["recall@10"],
              "recall10": index.recall_at(sample, rows, truth, vectors=vectors), **search_latency(index, vectors)}
    del index
    return result


def bench_map(vectors: np.ndarray) -> dict:
    from core.analysis.projection import compute_projection

    start = time.perf_counter()
    coords = compute_projection(vectors, seed=0)
    seconds = time.perf_counter() - start
    assert coords.shape == (len(vectors), 2) and np.isfinite(coords).all()
    return {"map_s": seconds, "points": len(vectors)}


def bench_encode(work: Path) -> dict:
    from core.data.sample import ensure_sample_dataset

    workspace = work / "encode-ws"
    ensure_sample_dataset(workspace)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    base = ["encode", "--workspace", str(workspace), "--run-name", "zs-text", "--dataset", "sample",
            "--modality", "text", "--shard-notes", "64"]
    result = {"encoder": "zs-text", "dataset": "sample (text)"}
    for name, prefix, threads in (("1proc", [sys.executable, "-m", "core"], "2"),
                                  ("2proc", [torchrun, "--nproc_per_node", "2", "--master_port", "29531",
                                             "-m", "core"], "1")):
        best = None
        for _ in range(2):
            shutil.rmtree(workspace / "indexes" / "zs-text", ignore_errors=True)
            out, _, _ = run_child(prefix + base, {"OMP_NUM_THREADS": threads})
            figures = json.loads(out.strip().splitlines()[-1])
            rate = figures["notes"] / figures["encode_s"]
            best = rate if best is None else max(best, rate)
        result[f"notes_per_s_{name}"] = best
        result["notes"] = figures["notes"]
    return result


# ------------------------------------------------------------------------------------------ driver
def run(sizes: tuple[int, ...], work: Path) -> dict:
    from bench.common import cpu_pressure, machine
    from core.analysis.projection import compute_projection
    from core.index import mixture_like

    results: dict = {"machine": machine(), "sizes": list(sizes)}
    largest = max(sizes)

    print(f"import {largest:,} notes ...", file=sys.stderr, flush=True)
    results["import"] = bench_import(work, largest)
    print("picker ...", file=sys.stderr, flush=True)
    results["picker"] = bench_picker(work, largest)

    print("real vectors (zs-text on the sample) ...", file=sys.stderr, flush=True)
    real = real_vectors(work)
    results["real"] = {"notes": len(real), "dim": int(real.shape[1]), "ivf": bench_index(real, kind="ivf")}

    # numba's one-off compilation (both UMAP code paths) is measured apart from the maps.
    start = time.perf_counter()
    compute_projection(mixture_like(real, 4_500, seed=3), seed=0)
    results["map_warmup_s"] = time.perf_counter() - start

    for size in sizes:
        print(f"{size:,} vectors: generate, index, search, map ...", file=sys.stderr, flush=True)
        path = work / f"vectors-{label(size)}.npy"
        start = time.perf_counter()
        vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(size, real.shape[1]))
        mixture_like(real, size, seed=1, out=vectors)
        vectors.flush()
        generate_s = time.perf_counter() - start
        vectors = np.load(path, mmap_mode="r")
        section = {"generate_s": generate_s, "index": bench_index(vectors),
                   # What `auto` switches to past the memory budget: PQ codes in RAM, exact re-scoring from the file.
                   "index_ivfpq": bench_index(vectors, kind="ivfpq"), **bench_map(vectors)}
        results[label(size)] = section
        del vectors
        path.unlink()

    print("encode with 1 and 2 processes ...", file=sys.stderr, flush=True)
    results["encode"] = bench_encode(work)
    results["machine"]["cpu_pressure_avg10_at_end"] = cpu_pressure()
    results["bench_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    big = results[label(largest)]
    headline = {
        "import_notes_per_s_1m": results["import"]["import_notes_per_s"],
        "import_peak_rss_gb_1m": results["import"]["import_peak_rss_gb"],
        "search_p50_ms_1m": big["index"]["p50_ms"], "search_p99_ms_1m": big["index"]["p99_ms"],
        "recall10_1m": big["index"]["recall10"], "index_build_s_1m": big["index"]["build_s"],
        "index_gb_1m": big["index"]["index_gb"],
        "search_p50_ms_1m_ivfpq": big["index_ivfpq"]["p50_ms"], "recall10_1m_ivfpq": big["index_ivfpq"]["recall10"],
        "index_gb_1m_ivfpq": big["index_ivfpq"]["index_gb"], "index_build_s_1m_ivfpq": big["index_ivfpq"]["build_s"],
        "map_s_1m": big["map_s"], "picker_ms_1m": results["picker"]["max_ms"],
        "encode_notes_per_s_1proc": results["encode"]["notes_per_s_1proc"],
        "encode_notes_per_s_2proc": results["encode"]["notes_per_s_2proc"],
    }
    if "100k" in results:
        headline.update({"search_p50_ms_100k": results["100k"]["index"]["p50_ms"],
                         "search_p99_ms_100k": results["100k"]["index"]["p99_ms"],
                         "recall10_100k": results["100k"]["index"]["recall10"],
                         "map_s_100k": results["100k"]["map_s"]})
    if largest != 1_000_000:  # a quick run says so rather than filling the million's keys
        headline = {k.replace("_1m", f"_{label(largest)}"): v for k, v in headline.items()}
    results.update(headline)
    results["targets"] = {key: {"target": f"{op} {bound}", "met": (results[key] <= bound if op == "<=" else
                                                                  results[key] >= bound)}
                          for key, (op, bound) in TARGETS.items() if key in results}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k and 50k instead of 100k and 1M")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new one under /tmp, deleted after)")
    parser.add_argument("--out", default=str(RESULTS), help=f"results.json to update (only its {KEY!r} key)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    sizes = (20_000, 50_000) if args.quick else (100_000, 1_000_000)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        figures = run(sizes, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=2, default=float))
    if not args.no_write:
        # Read-modify-write of one key, just before writing: other benchmarks write the same file.
        path = Path(args.out)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[KEY] = figures
        temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(results, indent=2, default=float))
        os.replace(temporary, path)
        print(f"wrote {KEY!r} into {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
