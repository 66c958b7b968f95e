"""faiss search latency (one query at a time, as a user's search runs) over random 64-d unit vectors:
exact inner product (IndexFlatIP) and IVF (IndexIVFFlat, nlist = 4 sqrt(N), nprobe 16, as core/index.py
builds it), with IVF's recall@10 against exact. Plus core.index.VectorIndex.search at 100k (tie-breaking
and exclusions included), the path the app takes."""
from __future__ import annotations

import time

import numpy as np


def unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def latencies(search, queries: np.ndarray) -> tuple[dict, list]:
    times, answers = [], []
    search(queries[:1])
    for row in queries:
        start = time.perf_counter()
        answers.append(search(row[None]))
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "queries": len(queries)}, answers


def run(quick: bool = False, dim: int = 64, k: int = 10) -> dict:
    import faiss

    from core.index import VectorIndex

    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    results = {"faiss_threads": faiss.omp_get_max_threads()}
    for size in sizes:
        base = unit_vectors(size, dim, seed=1)
        queries = unit_vectors(50 if size >= 1_000_000 else 200, dim, seed=2)
        exact = faiss.IndexFlatIP(dim)
        exact.add(base)
        stats_exact, exact_answers = latencies(lambda q: exact.search(q, k)[1][0], queries)
        nlist = max(1, int(4 * np.sqrt(size)))
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        train = base[np.random.default_rng(3).permutation(size)[: min(size, 40 * nlist)]]
        start = time.perf_counter()
        ivf.train(train)
        train_s = time.perf_counter() - start
        ivf.add(base)
        ivf.nprobe = min(16, nlist)
        stats_ivf, ivf_answers = latencies(lambda q: ivf.search(q, k)[1][0], queries)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ivf_answers, exact_answers)]))
        # Uniform random vectors have no cluster structure, IVF's worst case: show what more probes buy.
        sweep = {}
        for nprobe in (64, 256):
            if nprobe < nlist:
                ivf.nprobe = nprobe
                stats, answers = latencies(lambda q: ivf.search(q, k)[1][0], queries[:50])
                sweep[str(nprobe)] = {"p50_ms": stats["p50_ms"], "recall@10_vs_exact": float(np.mean(
                    [len(set(a) & set(b)) / k for a, b in zip(answers, exact_answers[:50])]))}
        ivf.nprobe = min(16, nlist)
        label = f"{size // 1000}k" if size < 1_000_000 else f"{size // 1_000_000}M"
        results[label] = {"exact": stats_exact, "ivf": {**stats_ivf, "nlist": nlist, "nprobe": ivf.nprobe,
                                                         "recall@10_vs_exact": recall, "train_s": train_s,
                                                         "nprobe_sweep": sweep}}
        if size == 100_000:
            results["search_p50_ms_100k"] = stats_exact["p50_ms"]
            index = VectorIndex([str(i) for i in range(size)], base)
            stats_engine, _ = latencies(lambda q: index.search(q, k), queries[:100])
            results["engine_vectorindex_100k"] = stats_engine
        del base, exact, ivf
    return results
