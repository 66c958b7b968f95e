"""UMAP time for 1k and 10k points of 64-d vectors, through the analysis layer's projection (what the
embedding-map view runs). The first call includes numba's one-off compilation; it is reported apart."""
from __future__ import annotations

import time

from bench.search import unit_vectors


def run(quick: bool = False) -> dict:
    from core.analysis.projection import compute_projection

    results = {}
    start = time.perf_counter()
    compute_projection(unit_vectors(300, 64, seed=5), seed=0, method="umap")
    results["umap_first_call_jit_s"] = time.perf_counter() - start
    for size in ((1000,) if quick else (1000, 10_000)):
        vectors = unit_vectors(size, 64, seed=6)
        start = time.perf_counter()
        compute_projection(vectors, seed=0, method="umap")
        results[f"umap_{size // 1000}k_s"] = time.perf_counter() - start
    return results
