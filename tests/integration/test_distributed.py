"""Two real CPU processes under torchrun: the all-gathered loss equals the one-process loss on the same
global batch, and so does the loss after an optimizer step (the gradient scaling is exact)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.runs import read_events
from core.workspace import REPO_ROOT
from tests.unit.engine_fixtures import import_learnable

pytestmark = pytest.mark.distributed


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    import_learnable(workspace, "toy")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    # `--run-name`: torchrun refuses `--run` as an ambiguous prefix of its own --run-path.
    _train([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "core"], workspace, "two", batch_pairs=4)
    _train([sys.executable, "-m", "core"], workspace, "one", batch_pairs=8)
    two = [r for r in read_events(workspace / "runs" / "two") if "loss" in r]
    one = [r for r in read_events(workspace / "runs" / "one") if "loss" in r]
    assert [r["step"] for r in two] == [1, 2]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert [r["temperature"] for r in two] == pytest.approx([r["temperature"] for r in one], rel=1e-6)
    assert (workspace / "runs" / "two" / "model.safetensors").exists()


def _train(prefix, workspace, name, batch_pairs):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = prefix + ["train", "--workspace", str(workspace), "--dataset", "toy", "--variant", "micl+late",
                     "--preset", "tiny", "--steps", "2", "--eval-every", "0", "--test-fraction", "0.3",
                     "--run-name", name, "--batch-pairs", str(batch_pairs)]
    done = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
