"""Peak matrix-product throughput (fp32 and bf16): the physical reference every MFU here is divided by."""
from __future__ import annotations

import torch

from bench.common import timed


def run(quick: bool = False, device: str = "cpu") -> dict:
    sizes = (2048, 4096) if not quick else (2048,)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        best, median = 0.0, 0.0
        for n in sizes:
            a = torch.randn(n, n, dtype=dtype, device=device)
            b = torch.randn(n, n, dtype=dtype, device=device)
            sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

            def product():
                a @ b
                sync()

            repeats = 3 if dtype == torch.float32 else 7
            t = timed(product, repeats=repeats if not quick else 3)
            flops = 2.0 * n ** 3
            best, median = max(best, flops / t["best"]), max(median, flops / t["median"])
        name = "fp32" if dtype == torch.float32 else "bf16"
        results[f"peak_{name}_tflops"] = best / 1e12
        results[f"peak_{name}_tflops_median"] = median / 1e12
    results["bf16_over_fp32"] = results["peak_bf16_tflops"] / results["peak_fp32_tflops"]
    return results
