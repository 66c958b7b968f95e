"""End-to-end latency of one new note (a picture never seen before + text) to its 10 neighbours over a
10k-vector index, with the offline default model already loaded (what the app does per search), and the
app's cold start: `python launch.py` on an empty workspace until the page answers HTTP 200 and until a first
search answer comes back through gradio_client."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


from bench.common import ROOT, SAMPLE, synthetic_notes, timed


def query_latency(model, quick: bool = False) -> dict:
    from core.index import VectorIndex
    from bench.search import unit_vectors

    index = VectorIndex([f"n{i}" for i in range(10_000)], unit_vectors(10_000, model.config.embedding_dim, seed=7))
    fresh = iter(synthetic_notes(20, seed=11))  # new pixels every call: the vision tower always runs

    def one_query():
        note = next(fresh)
        vector = model.encode([note], batch_size=1)
        return index.search(vector, 10)

    t = timed(one_query, repeats=3 if quick else 7)
    return {"query_latency_s": t["median"], "query_latency_s_best": t["best"], "index_vectors": 10_000}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a process and its children (Gradio may run helpers), in MB."""
    total = 0.0
    for candidate in [pid] + _children(pid):
        try:
            for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
                if line.startswith("VmHWM"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total or None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def app_cold_start(timeout: float = 240.0) -> dict:
    if not (ROOT / "launch.py").exists() or not (ROOT / "app").exists():
        return {"app_cold_start": "not measured: launch.py or app/ missing"}
    from gradio_client import Client

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    first_note = next(iter((SAMPLE / "notes.csv").read_text(encoding="utf-8").splitlines()[1:]), "").split(",")[0]
    with tempfile.TemporaryDirectory(prefix="bench-app-") as workspace:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "launch.py", "--port", str(port), "--workspace", workspace],
                                   cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        result: dict = {}
        try:
            while time.perf_counter() - start < timeout:
                if process.poll() is not None:
                    return {"app_cold_start": f"not measured: launch.py exited ({process.stderr.read()[-300:]})"}
                try:
                    if urllib.request.urlopen(url, timeout=2).status == 200:
                        result["app_http_200_s"] = time.perf_counter() - start
                        break
                except OSError:
                    time.sleep(0.25)
            if "app_http_200_s" not in result:
                return {"app_cold_start": f"not measured: no HTTP 200 within {timeout:.0f} s"}
            client = Client(url, verbose=False)
            runs = Path(workspace) / "runs"
            last = ""
            while time.perf_counter() - start < timeout:
                shipped = sorted(p.name for p in runs.iterdir() if (p / "model.safetensors").exists()) if runs.exists() else []
                variant = shipped[0] if shipped else "zs-llm"
                try:
                    _, cards, _ = client.predict("sample", "A note from the dataset", first_note, "", "", "", None,
                                                 variant, "both", 10, api_name="/search")
                    if "wb-card" in cards:
                        result["app_first_answer_s"] = time.perf_counter() - start
                        result["app_first_answer_variant"] = variant
                        break
                    last = cards[-200:]
                except Exception as error:  # the sample may still be importing
                    last = repr(error)[-200:]
                time.sleep(1.0)
            if "app_first_answer_s" not in result:
                result["app_first_answer"] = f"not measured: no answer within {timeout:.0f} s ({last})"
            result["app_peak_rss_mb"] = _peak_rss_mb(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    return result
