"""GPU smoke test and benchmark in one command (at most a few minutes, no downloads):

    python bench/gpu_check.py                      # on a CUDA machine; writes $OUT/gpu_results.json if $OUT is set
    python bench/gpu_check.py --device cpu --quick # the same code on CPU, to check the script itself

1. Peak bf16 (and fp32/tf32) matrix-product throughput of the device: the MFU denominator.
2. Smoke, every variant (tiny random backbones of the real classes): encode is finite and unit-norm, the fast
   inference path agrees with the model's own forward, a training step gives a finite loss and gradients.
3. Throughput and MFU at SmolLM2-135M size: the offline default (SmolLM2-135M + EfficientNet-Lite0) when its
   packages are importable; otherwise a randomly initialised Llama of SmolLM2-135M's exact shape (written to a
   temporary HF folder, tiny tokenizer) with the tiny CLIP tower; throughput does not depend on weight values.
   Encode (cold/warm) at several batch sizes, and a LoRA training step (forward + backward + AdamW).
4. Peak GPU memory of each phase.

Extra site-packages (for instance the offline model packages carried from a virtualenv) can be put on the
path with --site DIR. FLOP counting is bench/README.md's: LLM 2 x matrix weights x real tokens + causal
attention; training 2 x forward for the frozen LLM (no weight gradients) + 3 x forward for attention and the
trainable connector/head.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=8192,
                     tie_word_embeddings=True, rope_theta=100000.0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats=3, warmup=1):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times), sorted(times)[len(times) // 2]


def peak_matmul(device, quick):
    n = 2048 if device.type == "cpu" else (4096 if quick else 8192)
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best, _ = timed(lambda: a @ b, device, repeats=5 if device.type == "cuda" else 3)
        out[f"peak_{name}_tflops"] = 2 * n ** 3 / best / 1e12
        del a, b
    return out


def notes(count):
    from bench.common import sample_notes

    return sample_notes(count)


def loss_of(output):
    from core.train.loss import ContrastiveLoss

    loss = ContrastiveLoss().to(output.embedding.device)
    return loss(output.embedding, output.visual_embedding)["loss"]


def pairs_batch(model, count_pairs):
    picked = notes(2 * count_pairs)
    return model.collate(picked[:count_pairs] + picked[count_pairs:])


# ------------------------------------------------------------------------------------------------ smoke
def smoke(device) -> dict:
    from core.models.note_encoder import VARIANTS, NoteEncoder, NoteEncoderConfig

    results = {}
    for variant in VARIANTS:
        row = {}
        try:
            torch.manual_seed(0)
            model = NoteEncoder(NoteEncoderConfig.tiny(variant), device=device).eval()
            sample = notes(6)
            vectors = model.encode(sample, batch_size=3)
            norms = torch.from_numpy(vectors).norm(dim=1)
            row["encode_finite"] = bool(torch.isfinite(torch.from_numpy(vectors)).all())
            row["encode_unit_norm"] = bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3))
            model.fast_inference = False
            reference = model.encode(sample, batch_size=3)
            model.fast_inference = True
            row["fast_path_max_diff"] = float(abs(reference - vectors).max())
            model.train()
            output = model(pairs_batch(model, 4))
            loss = loss_of(output)
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
            row["train_loss"] = loss.item()
            row["train_finite"] = bool(math.isfinite(loss.item()) and all(torch.isfinite(g).all() for g in grads))
            row["ok"] = row["encode_finite"] and row["encode_unit_norm"] and row["train_finite"] \
                and row["fast_path_max_diff"] < 1e-3
        except Exception as error:
            row = {"ok": False, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-800:]}
        results[variant] = row
    return results


# ------------------------------------------------------------------------------------------- full size
def full_size_config(workdir: Path, random_backbones: bool = False):
    """(NoteEncoderConfig, description): the offline default if it loads here, else a random SmolLM2-shaped
    Llama in a temporary folder with the tiny CLIP tower."""
    from core.models.note_encoder import NoteEncoderConfig

    try:
        if random_backbones:
            raise RuntimeError("--random-backbones")
        from core.models import provision

        provision.smollm2_folder()
        provision.efficientnet_lite0_weights()
        import efficientnet_lite_pytorch  # noqa: F401

        return NoteEncoderConfig(), "offline default (SmolLM2-135M + EfficientNet-Lite0)"
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error)[:120]}"
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.models.llm import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    folder = workdir / "smollm2-shaped-random"
    config = LlamaConfig(vocab_size=len(tokenizer), **SMOLLM2_SHAPE)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return (NoteEncoderConfig(llm=str(folder), vision="tiny:clip"),
            f"random SmolLM2-135M-shaped Llama + tiny CLIP tower (offline default unavailable: {reason})")


def throughput(device, quick, peak_flops, random_backbones=False) -> dict:
    from bench.common import decoder_flops
    from bench.encode import per_note_fixed_flops
    from core.models.note_encoder import NoteEncoder

    out = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        config, description = full_size_config(Path(folder), random_backbones)
        out["model"] = description
        model = NoteEncoder(config, device=device).eval()
        fixed, vision = per_note_fixed_flops(model)
        batches = (8, 32) if device.type == "cpu" else ((32, 128) if quick else (32, 64, 128, 256))
        pool = notes(max(batches) * 2)
        for size in batches:
            subset = pool[: size * 2] if device.type == "cuda" else pool[:size]
            lengths = [len(model.prompts.build(n).ids) for n in subset]
            llm = decoder_flops(model.llm.config, lengths)

            def cold():
                model._feature_cache.clear()
                model.encode(subset, batch_size=size)

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            cold_best, _ = timed(cold, device, repeats=2)
            warm_best, _ = timed(lambda: model.encode(subset, batch_size=size), device, repeats=3)
            row = {"notes": len(subset),
                   "cold_notes_per_s": len(subset) / cold_best,
                   "cold_mfu": (llm + len(subset) * (fixed + vision)) / cold_best / peak_flops,
                   "warm_notes_per_s": len(subset) / warm_best,
                   "warm_mfu": (llm + len(subset) * fixed) / warm_best / peak_flops}
            if device.type == "cuda":
                row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            out[f"encode_b{size}"] = row
        # Training step: LoRA (the model's own setting), AdamW over the trainable parameters.
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        pair_sizes = (4,) if device.type == "cpu" else ((16, 64) if quick else (16, 32, 64))
        for pairs in pair_sizes:
            batch = pairs_batch(model, pairs)
            vision_features, has_image = (model.image_features(batch["images"]) if model.vision is not None
                                          else (None, None))

            def step():
                output = model(batch, vision=vision_features, has_image=has_image)
                loss = loss_of(output)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            best, median = timed(step, device, repeats=3)
            lengths = [len(model.prompts.build(n).ids) for n in notes(2 * pairs)]
            forward = decoder_flops(model.llm.config, lengths)
            linear_only = decoder_flops(model.llm.config, [1] * len(lengths)) * (sum(lengths) / len(lengths))
            step_flops = 2 * forward + max(forward - linear_only, 0.0) + 3 * fixed * len(lengths)
            row = {"notes": 2 * pairs, "step_s": best, "notes_per_s": 2 * pairs / best,
                   "mfu": step_flops / best / peak_flops}
            if device.type == "cuda":
                row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            out[f"train_{pairs}_pairs"] = row
        del model, optimizer
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="GPU smoke test and benchmark (no downloads)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--random-backbones", action="store_true",
                        help="skip the offline default; use the random SmolLM2-shaped model (what a bare GPU box gets)")
    parser.add_argument("--site", action="append", default=[], help="extra site-packages folder(s) to import from")
    args = parser.parse_args(argv)
    for site in args.site:
        sys.path.append(site)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu to check the script", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "quick": args.quick}
    try:
        import transformers

        results["transformers"] = transformers.__version__
    except ImportError:
        pass
    results["matmul"] = peak_matmul(device, args.quick)
    peak = results["matmul"]["peak_bf16_tflops"] * 1e12
    print(f"[gpu_check] peak bf16 {peak / 1e12:.1f} TFLOP/s", file=sys.stderr, flush=True)
    results["smoke"] = smoke(device)
    print(f"[gpu_check] smoke done", file=sys.stderr, flush=True)
    try:
        results["throughput"] = throughput(device, args.quick, peak, args.random_backbones)
    except Exception as error:
        results["throughput"] = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-1500:]}
    results["all_smoke_ok"] = all(row.get("ok") for row in results["smoke"].values())
    results["seconds"] = time.perf_counter() - started
    print(render(results))
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_results.json").write_text(json.dumps(results, indent=2))
        print(f"wrote {Path(out) / 'gpu_results.json'}")
    return 0 if results["all_smoke_ok"] and "error" not in results["throughput"] else 1


def render(results: dict) -> str:
    mm = results["matmul"]
    lines = [f"device: {results['device']}, torch {results['torch']}; peak bf16 {mm['peak_bf16_tflops']:.1f} TFLOP/s, "
             f"fp32 {mm['peak_fp32_tflops']:.1f} TFLOP/s", "", "smoke (tiny backbones)"]
    for variant, row in results["smoke"].items():
        if "error" in row:
            lines.append(f"  FAIL {variant:11s} {row['error']}")
        else:
            lines.append(f"  {'ok  ' if row['ok'] else 'FAIL'} {variant:11s} finite {row['encode_finite']}, unit-norm "
                         f"{row['encode_unit_norm']}, fast-vs-reference {row['fast_path_max_diff']:.1e}, "
                         f"train loss {row['train_loss']:.3f}")
    tp = results["throughput"]
    lines.append("")
    if "error" in tp:
        lines.append(f"throughput: ERROR {tp['error']}")
    else:
        lines.append(f"throughput: {tp['model']}")
        for key, row in tp.items():
            if key.startswith("encode_"):
                lines.append(f"  {key:12s} cold {row['cold_notes_per_s']:8.1f} notes/s (MFU {row['cold_mfu']:.1%}), "
                             f"warm {row['warm_notes_per_s']:8.1f} notes/s (MFU {row['warm_mfu']:.1%})"
                             + (f", peak {row['peak_memory_gb']:.2f} GiB" if "peak_memory_gb" in row else ""))
            elif key.startswith("train_"):
                lines.append(f"  {key:12s} {row['notes_per_s']:8.1f} notes/s, step {row['step_s'] * 1e3:.0f} ms, "
                             f"MFU {row['mfu']:.1%}" + (f", peak {row['peak_memory_gb']:.2f} GiB"
                                                        if "peak_memory_gb" in row else ""))
    lines.append(f"\n{'all smoke checks passed' if results['all_smoke_ok'] else 'SMOKE FAILURES'}; "
                 f"{results['seconds']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
