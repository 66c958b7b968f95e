"""Nearest-neighbour search over note vectors with faiss: exact inner product (IndexFlatIP) by default, an
IVF index for large corpora. Scores are rounded before ranking (kernel noise must not split a true tie) and
equal scores are ordered by a seeded random priority per item, never by index order."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

SCORE_DECIMALS = 5
IVF_AUTO_THRESHOLD = 50_000


class VectorIndex:
    def __init__(self, ids: Sequence[str], vectors: np.ndarray, kind: str = "flat", nlist: int | None = None,
                 nprobe: int = 16, seed: int = 0):
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError("vectors must be a (N, d) matrix")
        if kind == "auto":
            kind = "ivf" if len(ids) >= IVF_AUTO_THRESHOLD else "flat"
        if kind not in ("flat", "ivf"):
            raise ValueError(f"index kind must be flat, ivf or auto, not {kind!r}")
        self.kind, self.seed, self.dim = kind, seed, vectors.shape[1]
        if kind == "flat":
            self.index = faiss.IndexFlatIP(self.dim)
        else:
            nlist = nlist or max(1, int(4 * np.sqrt(len(ids))))
            quantizer = faiss.IndexFlatIP(self.dim)
            self.index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.train(vectors)
            self.index.nprobe = min(nprobe, nlist)
            self._quantizer = quantizer
        self.ids: list[str] = []
        self.priority = np.zeros(0, dtype=np.int64)
        self.add(ids, vectors)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append vectors (a new note needs no re-encoding or rebuilding of the rest)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        if len(ids):
            self.index.add(vectors)
        self.ids.extend(ids)
        # Tie-break priorities: a seeded random order over positions, extended the same way for every run.
        rng = np.random.default_rng(self.seed)
        self.priority = rng.permutation(len(self.ids)) if len(self.ids) else np.zeros(0, dtype=np.int64)

    def search(self, queries: np.ndarray, k: int = 10, exclude: Iterable[Iterable[str]] | None = None
               ) -> list[list[tuple[str, float]]]:
        """Top-k (id, score) per query row, skipping ids in its `exclude` set."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        excludes = [set(e) for e in exclude] if exclude is not None else [set()] * len(queries)
        results = []
        total = len(self.ids)
        for row, query in enumerate(queries):
            skip = excludes[row]
            fetch = min(total, k + len(skip) + 16)
            while True:
                scores, positions = self.index.search(query[None], fetch)
                scores, positions = scores[0], positions[0]
                valid = positions >= 0
                scores, positions = np.round(scores[valid], SCORE_DECIMALS), positions[valid]
                kept = [i for i, p in enumerate(positions) if self.ids[p] not in skip]
                # Fetch more while the k-th score is tied with the last one fetched: the tie may run further.
                if fetch >= total or (len(kept) >= k and scores[-1] < scores[kept[k - 1]]):
                    break
                fetch = min(total, fetch * 2)
            order = sorted(kept, key=lambda i: (-scores[i], self.priority[positions[i]]))[:k]
            results.append([(self.ids[positions[i]], float(scores[i])) for i in order])
        return results
