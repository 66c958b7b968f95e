"""Nearest-neighbour search over note vectors with faiss, the index chosen by corpus size.

- `flat` (IndexFlatIP): exact; below EXACT_THRESHOLD vectors a scan costs a few milliseconds (384-d: about
  16 ms at 20k and 30 ms at 50k on the busy 2-core machine here), so nothing approximate is worth its
  training time or its lost recall.
- `ivf` (IndexIVFFlat): k-means cells trained on the corpus' own vectors (real embeddings are clustered,
  which is what makes IVF work; uniform random vectors are its worst case and say nothing about them).
- `ivfpq` (IndexIVFPQ): for corpora whose float32 vectors do not fit the memory budget: 4 bytes per 16
  dimensions in RAM, candidates re-scored exactly against the full vectors, which may be a read-only
  memmap of the on-disk vector cache (only the candidates' rows are read).
- `hnsw` (IndexHNSWFlat): a graph; fast queries without training, slow to build on few cores.

`build_index` picks the kind and then `tune`s the search breadth (`nprobe`, or `efSearch` for HNSW): the
smallest value whose recall@10 against exact search, over queries drawn from the corpus itself (each
query's own vector left out of both lists, ties with the 10th exact score counted as found), reaches the
target (0.95 by default).

Scores are rounded before ranking (kernel noise must not split a true tie) and equal scores are ordered by
a seeded random priority per item, never by index order."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

SCORE_DECIMALS = 5
EXACT_THRESHOLD = 20_000
IVF_AUTO_THRESHOLD = EXACT_THRESHOLD  # the older name of the same switch
TARGET_RECALL = 0.95
# Vectors an `ivf` index may copy into RAM (float32) before `auto` switches to compressed codes.
MEMORY_BUDGET_BYTES = 4 * 1024 ** 3
KINDS = ("flat", "ivf", "ivfpq", "hnsw", "auto")
# faiss wants at least 39 training points per centroid; 64 gives stabler cells and stays quick.
TRAIN_POINTS_PER_LIST = 64
# IVF-PQ fetches this many times the candidates asked for, then re-scores them with the exact vectors;
# `tune` doubles it (up to PQ_RERANK_MAX) when more cells stop raising recall.
PQ_RERANK = 8
PQ_RERANK_MAX = 64
# A search asks the index for this many more than k (plus the excluded ids), so ties and exclusions rarely
# need a second round; recall is measured with the same margin, since that is what a search gets.
SEARCH_MARGIN = 16
HNSW_LINKS = 32


def choose_kind(count: int, dim: int, memory_budget: int = MEMORY_BUDGET_BYTES) -> str:
    if count < EXACT_THRESHOLD:
        return "flat"
    return "ivf" if count * dim * 4 <= memory_budget else "ivfpq"


def default_nlist(count: int) -> int:
    """About sqrt(N) cells: the quantizer scan and the cell scans then cost about the same."""
    return int(max(1, min(round(np.sqrt(count)), count // 39 or 1)))


def _pq_subquantizers(dim: int) -> int:
    """The most sub-vectors of at least 4 dimensions that divide `dim` (faiss needs an exact split)."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1


class VectorIndex:
    def __init__(self, ids: Sequence[str], vectors: np.ndarray, kind: str = "flat", nlist: int | None = None,
                 nprobe: int = 16, seed: int = 0, keep_vectors: np.ndarray | None = None):
        import faiss

        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if getattr(vectors, "ndim", 2) != 2:
            raise ValueError("vectors must be a (N, d) matrix")
        count, self.dim = len(vectors), vectors.shape[1]
        if kind == "auto":
            kind = choose_kind(count, self.dim)
        self.kind, self.seed = kind, seed
        self.nlist = None
        self.recall: float | None = None  # recall@10 against exact, once tuned
        self._vectors = None  # exact rows for IVF-PQ re-scoring
        self.rerank = PQ_RERANK
        if kind == "flat":
            self.index = faiss.IndexFlatIP(self.dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(self.dim, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = max(nprobe, 16)
        else:
            self.nlist = nlist or default_nlist(count)
            self._quantizer = faiss.IndexFlatIP(self.dim)
            if kind == "ivf":
                self.index = faiss.IndexIVFFlat(self._quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                self.index = faiss.IndexIVFPQ(self._quantizer, self.dim, self.nlist, _pq_subquantizers(self.dim), 8,
                                              faiss.METRIC_INNER_PRODUCT)
                self._vectors = keep_vectors if keep_vectors is not None else vectors
            self.index.train(self._training_sample(vectors))
            self.index.nprobe = min(nprobe, self.nlist)
        self.ids: list[str] = []
        self.priority = np.zeros(0, dtype=np.int64)
        self.add(ids, vectors)

    def _training_sample(self, vectors: np.ndarray) -> np.ndarray:
        """A seeded sample of the corpus itself (sorted rows: a memmap then reads forward)."""
        wanted = TRAIN_POINTS_PER_LIST * self.nlist
        if self.kind == "ivfpq":
            wanted = max(wanted, 256 * 64)  # the PQ codebooks need their own points
        if len(vectors) <= wanted:
            return np.ascontiguousarray(vectors, dtype=np.float32)
        rows = np.sort(np.random.default_rng(self.seed).choice(len(vectors), wanted, replace=False))
        return np.ascontiguousarray(vectors[rows], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def breadth(self) -> int | None:
        """The search-breadth knob `tune` sets: nprobe for IVF kinds, efSearch for HNSW, None for exact."""
        if self.kind == "hnsw":
            return int(self.index.hnsw.efSearch)
        return int(self.index.nprobe) if self.nlist else None

    def set_breadth(self, value: int) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(value)
        elif self.nlist:
            self.index.nprobe = int(min(value, self.nlist))

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append vectors (a new note needs no re-encoding or rebuilding of the rest)."""
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        if self.kind == "ivfpq" and len(self.ids) and len(ids):
            self._vectors = np.concatenate([np.asarray(self._vectors), np.asarray(vectors, dtype=np.float32)])
        # Large corpora are added in slices so that a memmapped matrix is never copied whole.
        for start in range(0, len(ids), 65_536):
            self.index.add(np.ascontiguousarray(vectors[start:start + 65_536], dtype=np.float32))
        self.ids.extend(ids)
        # Tie-break priorities: a seeded random order over positions, extended the same way for every run.
        rng = np.random.default_rng(self.seed)
        self.priority = rng.permutation(len(self.ids)) if len(self.ids) else np.zeros(0, dtype=np.int64)

    def _raw_search(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions), each (len(queries), fetch); positions -1 where fewer were found."""
        if self.kind != "ivfpq":
            return self.index.search(queries, fetch)
        wide = min(len(self.ids), fetch * self.rerank)
        _, candidates = self.index.search(queries, wide)
        scores = np.full((len(queries), fetch), -np.inf, dtype=np.float32)
        positions = np.full((len(queries), fetch), -1, dtype=np.int64)
        for row, found in enumerate(candidates):
            found = found[found >= 0]
            order = np.argsort(found)  # ascending rows: a memmap reads forward
            exact = np.asarray(self._vectors[found[order]], dtype=np.float32) @ queries[row]
            best = np.argsort(-exact, kind="stable")[:fetch]
            scores[row, :len(best)] = exact[best]
            positions[row, :len(best)] = found[order][best]
        return scores, positions

    def search(self, queries: np.ndarray, k: int = 10, exclude: Iterable[Iterable[str]] | None = None
               ) -> list[list[tuple[str, float]]]:
        """Top-k (id, score) per query row, skipping ids in its `exclude` set."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        excludes = [set(e) for e in exclude] if exclude is not None else [set()] * len(queries)
        results = []
        total = len(self.ids)
        for row, query in enumerate(queries):
            skip = excludes[row]
            fetch = min(total, k + len(skip) + SEARCH_MARGIN)
            while True:
                scores, positions = self._raw_search(query[None], fetch)
                scores, positions = scores[0], positions[0]
                valid = positions >= 0
                scores, positions = np.round(scores[valid], SCORE_DECIMALS), positions[valid]
                kept = [i for i, p in enumerate(positions) if self.ids[p] not in skip]
                # Fetch more while the k-th score is tied with the last one fetched: the tie may run further.
                if fetch >= total or (len(kept) >= k and scores[-1] < scores[kept[k - 1]]):
                    break
                # An approximate index may return fewer than asked; asking for more then finds no more.
                if len(positions) < fetch and self.kind != "flat":
                    break
                fetch = min(total, fetch * 2)
            order = sorted(kept, key=lambda i: (-scores[i], self.priority[positions[i]]))[:k]
            results.append([(self.ids[positions[i]], float(scores[i])) for i in order])
        return results

    # ------------------------------------------------------------------------------------ tuning
    def recall_at(self, queries: np.ndarray, query_rows: np.ndarray, truth: np.ndarray, k: int = 10,
                  vectors: np.ndarray | None = None) -> float:
        """Mean share of the exact top-k that the index returns, each query's own row left out of both lists.

        With `vectors`, a returned note whose exact score ties the k-th exact score counts as found: real
        corpora hold duplicate notes, and which of several equal vectors fills the last places is arbitrary
        (the sample scored 0.90 at a full scan without this)."""
        _, found = self._raw_search(queries, min(len(self.ids), k + 1 + SEARCH_MARGIN))
        hits = []
        for query, own, approx, exact in zip(queries, query_rows, found, truth):
            approx = [p for p in approx if p != own and p >= 0][:k]
            if vectors is None:
                hits.append(len(set(approx) & set(exact)) / k)
                continue
            kth = float(np.asarray(vectors[int(exact[-1])], dtype=np.float32) @ query)
            scores = np.asarray(vectors[np.sort(approx)], dtype=np.float32) @ query if approx else np.zeros(0)
            hits.append(min(k, int((scores >= kth - 10 ** -SCORE_DECIMALS).sum())) / k)
        return float(np.mean(hits))

    def tune(self, vectors: np.ndarray, target: float = TARGET_RECALL, k: int = 10, queries: int = 200) -> dict:
        """Set the smallest search breadth whose recall@k against exact search reaches `target`, measured on
        `queries` rows of the corpus (`vectors`, in the order they were added). Returns what it measured."""
        if self.kind == "flat":
            self.recall = 1.0
            return {"kind": "flat", "recall@10": 1.0}
        rows, sample, truth = exact_neighbours(vectors, queries, k, self.seed)
        limit = self.nlist if self.nlist else 4096
        tried = {}
        for breadth in _breadths(limit):
            self.set_breadth(breadth)
            tried[str(breadth)] = self.recall_at(sample, rows, truth, k, vectors)
            if tried[str(breadth)] >= target:
                break
            # Compressed codes saturate: once more cells add (almost) nothing, re-score more candidates instead.
            if self.kind == "ivfpq" and len(tried) >= 3 and tried[str(breadth)] - list(tried.values())[-3] < 0.004:
                recall = tried[str(breadth)]
                while self.rerank < PQ_RERANK_MAX and recall < target:
                    self.rerank *= 2
                    recall = tried[f"{breadth}x{self.rerank}"] = self.recall_at(sample, rows, truth, k, vectors)
                break
        self.recall = list(tried.values())[-1]
        return {"kind": self.kind, "nlist": self.nlist, "breadth": self.breadth, "rerank": self.rerank
                if self.kind == "ivfpq" else None, "recall@10": self.recall, "target": target,
                "queries": len(rows), "tried": tried}


def _breadths(limit: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, ... up to `limit` (which is always tried last)."""
    values, base = [], 1
    while base < limit:
        values += [base] + ([base * 3 // 2] if base >= 2 else [])
        base *= 2
    return sorted({v for v in values if v < limit} | {limit})


def exact_neighbours(vectors: np.ndarray, queries: int, k: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, their vectors, exact top-k rows of each other than itself), by blocked matrix products so
    a memmapped million never sits in RAM twice."""
    count = len(vectors)
    rows = np.sort(np.random.default_rng(seed + 1).choice(count, min(queries, count), replace=False))
    sample = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    best_scores = np.full((len(rows), k + 1), -np.inf, dtype=np.float32)
    best_rows = np.full((len(rows), k + 1), -1, dtype=np.int64)
    block = 131_072
    for start in range(0, count, block):
        chunk = np.asarray(vectors[start:start + block], dtype=np.float32)
        scores = sample @ chunk.T
        scores[np.arange(len(rows))[(rows >= start) & (rows < start + len(chunk))],
               rows[(rows >= start) & (rows < start + len(chunk))] - start] = -np.inf  # never a query itself
        top = min(k + 1, scores.shape[1])
        part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], axis=1)
        merged_rows = np.concatenate([best_rows, part + start], axis=1)
        order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k + 1]
        best_scores = np.take_along_axis(merged_scores, order, 1)
        best_rows = np.take_along_axis(merged_rows, order, 1)
    return rows, sample, best_rows[:, :k]


def build_index(ids: Sequence[str], vectors: np.ndarray, kind: str = "auto", target: float = TARGET_RECALL,
                seed: int = 0, **options) -> VectorIndex:
    """An index of the kind the corpus size calls for, its search breadth tuned to recall@10 >= target."""
    index = VectorIndex(ids, vectors, kind=kind, seed=seed, **options)
    index.tuning = index.tune(vectors, target)
    return index


def mixture_like(vectors: np.ndarray, count: int, seed: int = 0, components: int | None = None,
                 rank: int = 32, out: np.ndarray | None = None, chunk: int = 100_000) -> np.ndarray:
    """`count` unit vectors drawn from a Gaussian mixture fitted to `vectors` (real note embeddings): the
    mixture lives in their top `rank` principal directions, and the rest of each vector is Gaussian noise with
    the variance the real vectors have outside them. Lets an index be measured at a million on the structure
    of real embeddings rather than on uniform random vectors. Written into `out` (e.g. a .npy memmap)."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    vectors = np.asarray(vectors, dtype=np.float64)
    rank = min(rank, len(vectors) - 1, vectors.shape[1])
    pca = PCA(rank, random_state=seed).fit(vectors)
    projected = pca.transform(vectors)
    components = components or max(1, min(32, len(vectors) // 40))
    mixture = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(projected)
    residual = vectors - pca.inverse_transform(projected)
    residual_std = float(np.sqrt((residual ** 2).sum(1).mean() / max(1, vectors.shape[1] - rank)))
    out = np.empty((count, vectors.shape[1]), np.float32) if out is None else out
    rng = np.random.default_rng(seed)
    basis = pca.components_.astype(np.float32)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        labels = rng.choice(components, size=size, p=mixture.weights_)
        latent = np.empty((size, rank))
        for c in range(components):
            picked = labels == c
            latent[picked] = rng.multivariate_normal(mixture.means_[c], mixture.covariances_[c], int(picked.sum()))
        block = latent.astype(np.float32) @ basis + pca.mean_.astype(np.float32)
        block += rng.standard_normal(block.shape, dtype=np.float32) * residual_std
        # The noise is drawn in all dimensions; removing its part inside the mixture's subspace keeps that exact.
        block -= ((block - pca.mean_.astype(np.float32) - latent.astype(np.float32) @ basis) @ basis.T) @ basis
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + size] = block
    return out
