"""Zero-shot baselines, encodable and evaluable exactly like trained runs (`.encode(notes, batch_size,
modality, progress) -> float32 (N, d)`, L2-normalised):

    zs-text    frozen all-MiniLM-L6-v2 (sentence-transformers) on title + topics + content
    zs-image   the frozen vision tower's pooled feature (offline EfficientNet-Lite0)
    zs-concat  both, each L2-normalised, concatenated and renormalised
    zs-llm     the frozen LLM's last-token state on the text prompt with the one-word instruction
    zs-mlrm    the untrained MLRM: a NoteEncoder (micl+late, offline backbones) with a random connector and
               gate, built from a fixed seed and calibrated on the bundled sample's pictures

Modality ablation as for runs: "image" empties the text, "text" replaces the image by a zero image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from core.data.schema import Note
from core.errors import WorkbenchError
from core.workspace import ZERO_SHOT_NAMES

ZERO_SHOT = ZERO_SHOT_NAMES
ZERO_SHOT_VERSION = "2"  # 2: zs-llm is the frozen LLM on the text prompt; the untrained MLRM is zs-mlrm
ZS_LLM_SEED = 1234


def _normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def note_text(note: Note) -> str:
    parts = [note.title, " ".join(f"#{t}" for t in note.topics), note.content]
    return ". ".join(p.strip() for p in parts if p and p.strip())


class ZeroShotText:
    name = "zs-text"

    def __init__(self, device: str | torch.device = "cpu"):
        from sentence_transformers import SentenceTransformer

        from core.models import provision

        self.model = SentenceTransformer(str(provision.minilm_folder()), device=str(device))
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = dimension()

    def encode(self, notes: Sequence[Note], batch_size: int = 32, modality: str = "both", progress=None) -> np.ndarray:
        texts = ["" if modality == "image" else note_text(note) for note in notes]
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            out[start:start + len(chunk)] = self.model.encode(chunk, batch_size=batch_size, normalize_embeddings=True,
                                                              convert_to_numpy=True, show_progress_bar=False)
            if progress is not None:
                progress(start + len(chunk), len(texts))
        return out


class ZeroShotImage:
    name = "zs-image"

    def __init__(self, device: str | torch.device = "cpu", workspace_root=None, vision: str | None = None):
        from core.features import VisionFeatureCache
        from core.models import provision
        from core.models.vision import load_vision_tower

        self.tower = load_vision_tower(vision or provision.OFFLINE_VISION).to(device).to(torch.bfloat16)
        self.tower.requires_grad_(False)
        self.features = VisionFeatureCache(workspace_root, self.tower)

    def encode(self, notes: Sequence[Note], batch_size: int = 32, modality: str = "both", progress=None) -> np.ndarray:
        images = [None if modality == "text" else note.image for note in notes]
        out = []
        for start in range(0, len(images), batch_size):
            features, _ = self.features(images[start:start + batch_size])
            out.append(features.pooled.float().numpy())
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
        return _normalise(np.concatenate(out)) if out else np.zeros((0, self.tower.width), np.float32)


# Baselines made of other baselines' vectors: a cache of a dataset's vectors fills them from their parts' caches
# (core.service.note_vectors, Workbench.note_vectors), so no part is ever encoded twice for them.
COMPOSED_BASELINES = {"zs-concat": ("zs-text", "zs-image")}


def concatenated(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Each part L2-normalised, side by side, renormalised: what `zs-concat` is, whoever computes it."""
    return _normalise(np.concatenate([_normalise(np.asarray(part, dtype=np.float32)) for part in parts], axis=1))


def composed_encode(name: str, part_vectors):
    """`encode(todo, progress)` for a composed baseline: its parts' vectors of `todo`, each through
    `part_vectors(part, todo, progress)` (a cache, so each part encodes only what it lacks), concatenated.
    Progress follows the last part."""
    *first, last = COMPOSED_BASELINES[name]

    def encode(todo, progress):
        return concatenated([part_vectors(part, todo, None) for part in first] + [part_vectors(last, todo, progress)])
    return encode


class ZeroShotConcat:
    name = "zs-concat"

    def __init__(self, text: ZeroShotText, image: ZeroShotImage):
        self.text, self.image = text, image

    def encode(self, notes, batch_size: int = 32, modality: str = "both", progress=None) -> np.ndarray:
        text = self.text.encode(notes, batch_size, modality)
        image = self.image.encode(notes, batch_size, modality, progress)
        return concatenated([text, image])


class ZeroShotLLM:
    """The frozen LLM's last-token state on the text prompt with the one-word instruction (the text-only
    prompt shape, `Note: {title, topics, content}, compress this note into one word: "`): the
    prompt-based sentence embedding that needs no training. No connector, no head: the vector is the
    final-norm hidden state itself, L2-normalised. It sees no image, so "image only" gives one shared vector."""

    name = "zs-llm"

    def __init__(self, device: str | torch.device = "cpu", llm: str | None = None):
        from core.models import provision
        from core.models.note_encoder import NoteEncoder, NoteEncoderConfig

        config = NoteEncoderConfig.for_variant("text", llm=llm or provision.OFFLINE_LLM, llm_tuning="frozen")
        self.model = NoteEncoder(config, device=device).eval()

    @torch.inference_mode()
    def encode(self, notes: Sequence[Note], batch_size: int = 32, modality: str = "both", progress=None) -> np.ndarray:
        model = self.model
        lengths = [len(model.prompts.build(note, modality).ids) for note in notes]
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(notes), model.llm.config.hidden_size), dtype=np.float32)
        for start in range(0, len(notes), batch_size):
            index = order[start:start + batch_size]
            batch = model.collate([notes[i] for i in index], modality)
            out[index] = model(batch).note_state.float().cpu().numpy()
            if progress is not None:
                progress(min(start + batch_size, len(notes)), len(notes))
        return _normalise(out)


# Real pictures of the bundled sample fix the untrained MLRM's late-fusion scale: calibrating on notes without
# pictures scaled the image projection by the zero image's feature instead (about 200x too large).
CALIBRATION_IMAGES = 16


def _calibration_notes() -> list[Note]:
    from core.workspace import REPO_ROOT

    folder = REPO_ROOT / "data" / "sample" / "images"
    images = sorted(folder.glob("*.jpg"))[:: max(1, len(sorted(folder.glob("*.jpg"))) // CALIBRATION_IMAGES)]
    words = ["bird", "car", "tree", "music", "flower", "house", "star", "map"]
    return [Note(str(i), title=f"A {words[i % len(words)]}", content=f"clip art of a {words[i % len(words)]}",
                 image=str(path)) for i, path in enumerate(images[:CALIBRATION_IMAGES])]


def untrained_mlrm(device: str | torch.device = "cpu"):
    """The untrained NoteLLM-2 (micl+late) with the offline backbones: a random connector and gate, so a
    floor for what training adds, not a zero-shot LLM. Reproducible from its seed; its late-fusion
    projection is calibrated on real pictures of the bundled sample."""
    from core.models.note_encoder import NoteEncoder, NoteEncoderConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ZS_LLM_SEED)
        model = NoteEncoder(NoteEncoderConfig.for_variant("micl+late", llm_tuning="frozen"), device=device)
    model.eval()
    notes = _calibration_notes()
    if not notes:
        raise WorkbenchError("the untrained MLRM needs the bundled sample's images (data/sample/images)")
    with torch.inference_mode():
        model(model.collate(notes))  # fixes the late-fusion calibration on real pictures
    return model


def load_zero_shot(name: str, device: str | torch.device = "cpu", workspace_root=None):
    if name == "zs-text":
        return ZeroShotText(device)
    if name == "zs-image":
        return ZeroShotImage(device, workspace_root)
    if name == "zs-concat":
        return ZeroShotConcat(ZeroShotText(device), ZeroShotImage(device, workspace_root))
    if name == "zs-llm":
        return ZeroShotLLM(device)
    if name == "zs-mlrm":
        return untrained_mlrm(device)
    raise WorkbenchError(f"unknown zero-shot baseline {name!r}; choose one of {', '.join(ZERO_SHOT)}")
