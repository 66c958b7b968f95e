"""A real workbench server for the app tests: temp workspace, the bundled sample, two tiny trained runs.

Shared by tests/app (gradio_client) and tests/browser (Playwright)."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The shipped demo checkpoints hold real SmolLM2 runs; these tests exercise the UI on tiny runs only.
os.environ["NOTELLM2_CHECKPOINTS"] = os.path.join(os.path.dirname(__file__), "no-shipped-checkpoints")

TINY_RUNS = {"tiny-micl-late": "micl+late", "tiny-basic": "basic"}


@dataclass
class Launched:
    url: str
    backend: object
    demo: object
    runs: list[str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_job(backend, job_id: str, timeout: float = 300):
    from core.workbench import JobState

    deadline = time.time() + timeout
    while time.time() < deadline:
        job = backend.workbench.job(job_id)
        if job.state is JobState.FINISHED:
            return job
        if not job.active:
            raise AssertionError(f"tiny training {job_id} {job.state.value}: {job.message}\n{job.log_tail}")
        time.sleep(0.5)
    raise AssertionError(f"tiny training {job_id} did not finish in {timeout} s")


def launch(workspace, steps: int = 4) -> Launched:
    from app.backend import Backend
    from launch import serve

    backend = Backend(workspace)
    backend._startup()  # synchronously here: the tests need the sample before the first request
    assert backend.startup.state == "ready", backend.startup.message
    # Both tiny runs at once: each is a worker process, mostly start-up time.
    jobs = [backend.workbench.start_training("sample", variant, run, preset="tiny", steps=steps)
            for run, variant in TINY_RUNS.items()]
    for job in jobs:
        wait_for_job(backend, job)
    port = free_port()
    demo, backend = serve(backend.workspace.root, port=port, block=False, backend=backend)
    return Launched(f"http://127.0.0.1:{port}/", backend, demo, list(TINY_RUNS))
