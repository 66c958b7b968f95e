"""Peak resident memory of encoding (offline default, 64 notes, batch 32, cold) in its own process.
Training's and the app's peaks come from their own benchmarks (bench/train.py, bench/latency.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.common import ROOT


def worker() -> None:
    import resource

    from bench.common import sample_notes
    from bench.encode import load_default_model

    model = load_default_model()
    model.encode(sample_notes(64), batch_size=32)
    print(json.dumps({"encode_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-m", "bench.memory"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
    try:
        return json.loads(process.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"encode_peak_rss_mb": None, "error": (process.stderr or "no output").strip()[-300:]}


if __name__ == "__main__":
    worker()
