"""Encoding throughput and MFU of the offline default (micl+late), cold (vision tower runs) and warm
(vision features cached in the model), beside sentence-transformers' all-MiniLM-L6-v2 on the same text.

FLOPs per note (forward): the LLM decoder at the note's real prompt length (bench/common.decoder_flops:
2 x matrix weights x tokens + causal attention), the Q-Former connector and the late-fusion/head (counted
by torch's FlopCounterMode on one note), and, cold only, the vision tower (FlopCounterMode; EfficientNet's
depthwise convolutions counted as executed). Padding is not counted: it is waste, not model work.
Peer: 2 x linear weights x tokens + bidirectional attention 4 x width x n^2 per layer, at the real token
count of its own tokenizer (truncated at its max_seq_length)."""
from __future__ import annotations

import torch

from bench.common import decoder_flops, hooked_flops, linear_params, sample_notes, timed


def note_text(note) -> str:
    return " ".join(part for part in (note.title, ", ".join(note.topics or []), note.content) if part)


def load_default_model(device: str = "cpu"):
    from core.models.note_encoder import NoteEncoder, NoteEncoderConfig

    model = NoteEncoder(NoteEncoderConfig(), device=device)
    model.eval()
    return model


def per_note_fixed_flops(model) -> tuple[float, float]:
    """(connector + late fusion + head FLOPs per note, vision tower FLOPs per image), from the layers each
    actually runs on one note (forward hooks; the tower through its plain, unfused path), plus the
    Q-Former's attention products."""
    notes = sample_notes(1)
    batch = model.collate(notes)
    with torch.no_grad():
        network = getattr(model.vision, "network", None)
        if network is not None:
            weight = next(network.parameters())
            pixels = model.vision.pixels([None]).to(device=weight.device, dtype=weight.dtype)
            vision_flops = hooked_flops(network, lambda: network.extract_features(pixels))
        else:
            vision_flops = hooked_flops(model.vision, lambda: model.vision(batch["images"]))
        features, _ = model.image_features(batch["images"])
        fixed = 0.0
        if model.connector is not None:
            fixed += hooked_flops(model.connector, lambda: model.connector(features.pooled.float(), features.patches.float()))
            queries = model.connector.num_tokens
            width = getattr(model.connector, "queries", None)
            if width is not None:
                width = width.shape[-1]
                image_tokens = 1 + features.patches.shape[1]
                for layer in model.connector.layers:
                    fixed += 4.0 * width * queries * queries
                    if layer.cross_attention is not None:
                        fixed += 4.0 * width * queries * image_tokens
        fixed += 2.0 * linear_params(model.head) * (2 if model.config.image_mode == "micl" else 1)
        if model.fusion is not None:
            fixed += 2.0 * model.fusion.image_projection.weight.numel()
            fixed += 2.0 * model.fusion.gate.weight.numel() * (2 if model.config.image_mode == "micl" else 1)
    return fixed, vision_flops


def encode_flops(model, notes, fixed: float, vision: float, cold: bool) -> float:
    lengths = [len(model.prompts.build(note).ids) for note in notes]
    return decoder_flops(model.llm.config, lengths) + len(notes) * (fixed + (vision if cold else 0.0))


def peer_flops(peer, texts) -> float:
    tokenizer = peer.tokenizer
    limit = peer.max_seq_length
    lengths = [min(len(tokenizer(t)["input_ids"]), limit) for t in texts]
    transformer = peer[0].auto_model
    config = transformer.config
    weights = linear_params(transformer)
    return sum(2.0 * weights * n + 4.0 * config.hidden_size * n * n * config.num_hidden_layers for n in lengths)


def run(peak_flops: float, quick: bool = False, batches=(1, 8, 32, 64), model=None) -> dict:
    from sentence_transformers import SentenceTransformer

    from core.models.provision import minilm_folder

    model = model or load_default_model()
    fixed, vision = per_note_fixed_flops(model)
    total = 64 if quick else 128
    notes = sample_notes(total)
    texts = [note_text(n) for n in notes]
    peer = SentenceTransformer(str(minilm_folder()), device="cpu")
    results = {"flops_per_note_connector_head": fixed, "flops_per_image_vision": vision,
               "prompt_tokens_mean": sum(len(model.prompts.build(n).ids) for n in notes) / len(notes),
               "by_batch": {}}
    if quick:
        batches = tuple(b for b in batches if b in (1, 32))
    for size in batches:
        count = min(total, max(2 * size, 16)) if size > 1 else (8 if quick else 16)
        subset, subset_texts = notes[:count], texts[:count]

        def cold():
            model._feature_cache.clear()
            model.encode(subset, batch_size=size)

        def warm():
            model.encode(subset, batch_size=size)

        repeats = 2 if quick else (5 if size >= 32 else 3)  # the shared machine is noisy: best of more
        t_cold = timed(cold, repeats=repeats)
        t_warm = timed(warm, repeats=repeats)
        t_peer = timed(lambda: peer.encode(subset_texts, batch_size=size), repeats=repeats)
        f_cold = encode_flops(model, subset, fixed, vision, cold=True)
        f_warm = encode_flops(model, subset, fixed, vision, cold=False)
        f_peer = peer_flops(peer, subset_texts)
        results["by_batch"][str(size)] = {
            "notes": count,
            "cold_notes_per_s": count / t_cold["best"], "cold_notes_per_s_median": count / t_cold["median"],
            "cold_mfu": f_cold / t_cold["best"] / peak_flops,
            "warm_notes_per_s": count / t_warm["best"], "warm_notes_per_s_median": count / t_warm["median"],
            "warm_mfu": f_warm / t_warm["best"] / peak_flops,
            "peer_notes_per_s": count / t_peer["best"], "peer_mfu": f_peer / t_peer["best"] / peak_flops,
            "tflops_cold": f_cold / t_cold["best"] / 1e12, "tflops_warm": f_warm / t_warm["best"] / 1e12,
        }
    # The same warm batch of 32 through the model's own (transformers) forward: what the fast path buys.
    subset = notes[:64]
    model.fast_inference = False
    reference = timed(lambda: model.encode(subset, batch_size=32), repeats=2)
    model.fast_inference = True
    fast = timed(lambda: model.encode(subset, batch_size=32), repeats=2)
    results["warm_b32_reference_path_notes_per_s"] = len(subset) / reference["best"]
    results["warm_b32_fast_path_notes_per_s"] = len(subset) / fast["best"]
    big = [results["by_batch"][k] for k in results["by_batch"] if int(k) >= 16]
    if big:
        results["encode_mfu"] = max(r["cold_mfu"] for r in big)
        results["encode_mfu_warm"] = max(r["warm_mfu"] for r in big)
        results["peer_mfu"] = max(r["peer_mfu"] for r in big)
        results["encode_notes_per_s"] = max(r["cold_notes_per_s"] for r in big)
        results["peer_notes_per_s"] = max(r["peer_notes_per_s"] for r in big)
    return results
