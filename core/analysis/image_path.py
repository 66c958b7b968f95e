"""Does the picture reach the note vector? Instruments that tell visual neglect from a broken image path.

Visual neglect means the LLM ignores image information that reaches it. Two other failures look the same
from outside (image-only retrieval near chance) and must be ruled out first:
- the connector collapses: its outputs hardly vary across pictures, so nothing about the picture enters
  the LLM at all;
- the image side of mICL (n_v) never learns: its loss stays at chance, ln(2B - 1) for B pairs.

All figures are measured on the same held-out queries and pool, so they can be read against each other:

    zs_image_r10          the frozen vision tower's pooled feature alone: what the picture can give
    connector_probe_r10   the connector's outputs, mean-pooled over its tokens and mean-centred over the
                          notes: what of the picture enters the LLM
    nv_r10                (mICL) the n_v embedding of image-only prompts: what the LLM's image side keeps
    nv_state_r10          (mICL) the same n_v before the 64-d head it shares with n_m: told apart from
                          nv_r10, whether the picture is lost in the LLM or in the head's few dimensions
    image_only_r10        the retrieval vector of image-only prompts: what reaches the final vector
    connector_variation   RMS over notes of each output's distance to the mean output, over the RMS size
                          of the outputs (about 0.8 for a random connector; near 0 once collapsed)
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from core.data.schema import Note

# A run is called collapsed below these shares (see `health_verdict`).
MIN_CONNECTOR_VARIATION = 0.1
MIN_PROBE_SHARE = 0.5  # connector probe Recall@10 against the frozen tower's own
MAX_VISUAL_LOSS_SHARE = 0.97  # mICL visual loss against chance, once training is under way


def chance_loss(global_pairs: int) -> float:
    """The contrastive loss of embeddings that carry nothing: each row picks its partner among 2B - 1."""
    return math.log(2 * global_pairs - 1)


def connector_variation(visual_tokens: torch.Tensor) -> float:
    """(N, tokens, width) connector outputs -> RMS distance to the mean output over the RMS output size."""
    visual = visual_tokens.float()
    if visual.shape[0] < 2:
        return float("nan")
    spread = (visual - visual.mean(0, keepdim=True)).pow(2).mean().sqrt()
    size = visual.pow(2).mean().sqrt()
    return float(spread / size) if size > 0 else 0.0


def _normalise(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@torch.inference_mode()
def image_side_vectors(model, notes: Sequence[Note], features=None, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Vectors of every image-side instrument for `notes`, from image-only prompts (empty text).

    Keys: "zs_image" (frozen pooled feature), "connector_probe" (when the model has a connector),
    "nv" and "nv_state" (under mICL: after and before the head), "image_only" (the retrieval vector). `features(images) -> (VisionFeatures, has_image)`
    is the disk-backed feature cache (core/features.py); None uses the model's own."""
    from core.features import model_features

    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {"zs_image": [], "image_only": []}
    if model.connector is not None:
        out["connector_probe"] = []
        out["connector_tokens"] = []
    if model.config.image_mode == "micl":
        out["nv"] = []
        out["nv_state"] = []
    try:
        for start in range(0, len(notes), batch_size):
            chunk = list(notes[start:start + batch_size])
            batch = model.collate(chunk, modality="image")
            if features is None:
                vision, has_image = model_features(model, None, batch["images"])
            else:
                vision, has_image = features(batch["images"])
                vision = vision.to(model.device)
            out["zs_image"].append(vision.pooled.float().cpu().numpy())
            if model.connector is not None:
                tokens = model.connector(vision.pooled.float(), vision.patches.float()).float()
                out["connector_tokens"].append(tokens.cpu())
            output = model(batch, vision=vision, has_image=has_image)
            out["image_only"].append(output.embedding.float().cpu().numpy())
            if "nv" in out:
                out["nv"].append(output.visual_embedding.float().cpu().numpy())
                out["nv_state"].append(output.visual_state.float().cpu().numpy())
    finally:
        model.train(was_training)
    result = {key: np.concatenate(value) for key, value in out.items() if value and key != "connector_tokens"}
    if "connector_tokens" in out and out["connector_tokens"]:
        tokens = torch.cat(out["connector_tokens"])
        pooled = tokens.mean(1).numpy()
        result["connector_probe"] = pooled - pooled.mean(0, keepdims=True)
        result["connector_variation"] = np.array(connector_variation(tokens))
    for key in ("zs_image", "connector_probe", "nv", "nv_state", "image_only"):
        if key in result:
            result[key] = _normalise(result[key])
    return result


def image_path_health(model, notes: Sequence[Note], test_pairs, features=None, batch_size: int = 32,
                      seed: int = 0, **evaluate_options) -> dict:
    """Recall@10 of each image-side instrument on image-only queries, and the connector's variation.

    `notes` are the held-out notes (queries, targets and distractors); `test_pairs` the held-out pairs.
    Returns {"zs_image_r10", "connector_probe_r10", "nv_r10", "nv_state_r10", "image_only_r10",
    "connector_variation", "queries", "pool", "chance_r10"}; keys that do not apply to the model's variant are left out."""
    from core.evaluate import evaluate_vectors

    notes = list(notes)
    if model.vision is None or not notes:
        return {}
    vectors = image_side_vectors(model, notes, features, batch_size)
    ids = [note.note_id for note in notes]
    result: dict = {}
    for key in ("zs_image", "connector_probe", "nv", "nv_state", "image_only"):
        if key not in vectors:
            continue
        figures = evaluate_vectors((ids, vectors[key]), test_pairs, None, ids, seed=seed, **evaluate_options)
        result[f"{key}_r10"] = figures.get("recall@10", float("nan"))
        result.setdefault("queries", figures.get("queries"))
        result.setdefault("pool", figures.get("pool"))
        if figures.get("pool"):
            result.setdefault("chance_r10", min(1.0, 10 / figures["pool"]))
    if "connector_variation" in vectors:
        result["connector_variation"] = float(vectors["connector_variation"])
    return result


def health_verdict(health: dict, visual_loss: float | None = None, chance: float | None = None) -> str | None:
    """A sentence when the image path looks broken, else None. Read with the figures, not instead of them."""
    problems = []
    variation = health.get("connector_variation")
    if variation is not None and variation < MIN_CONNECTOR_VARIATION:
        problems.append(f"the connector's outputs hardly vary across pictures (variation {variation:.3f}, "
                        f"below {MIN_CONNECTOR_VARIATION})")
    probe, tower = health.get("connector_probe_r10"), health.get("zs_image_r10")
    if probe is not None and tower and tower > 0 and probe < MIN_PROBE_SHARE * tower:
        problems.append(f"the connector keeps {probe:.1%} image-only Recall@10 where the frozen tower alone "
                        f"finds {tower:.1%}")
    # The visual loss is a noisy figure of a few training batches; held-out n_v retrieval measures the same
    # thing directly. A loss near chance counts only when n_v retrieval does not contradict it (at step 50 of
    # a healthy openclipart run the loss sat at 0.97x chance while n_v already found 0.67x the tower's).
    nv = health.get("nv_r10")
    nv_learns = nv is not None and tower and tower > 0 and nv >= MIN_PROBE_SHARE * tower
    if visual_loss is not None and chance and visual_loss > MAX_VISUAL_LOSS_SHARE * chance and not nv_learns:
        problems.append(f"the image-side (n_v) loss {visual_loss:.3f} is at chance ({chance:.3f})")
    if not problems:
        return None
    return ("The image path looks broken: " + "; ".join(problems)
            + ". Image-only results of this run measure that, not visual neglect.")
