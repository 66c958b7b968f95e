"""Encoding spread over two real CPU processes with torchrun: each takes every other shard, rank 0 assembles
the vector file, and the file is the one a single process writes, bit for bit."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest

from core.train.trainer import train
from core.workspace import REPO_ROOT
from tests.unit.engine_fixtures import import_learnable

pytestmark = pytest.mark.distributed


def test_two_processes_write_the_vectors_one_process_writes(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    import_learnable(workspace, "toy")
    train(workspace, "toy", "micl+late", "tiny-run", preset="tiny", steps=2, eval_every=0, test_fraction=0.3)
    folder = workspace / "indexes" / "tiny-run" / "toy"
    torchrun = str(Path(sys.executable).with_name("torchrun"))

    one = _encode([sys.executable, "-m", "core"], workspace)
    meta_one, vectors_one = (folder / "both.json").read_text(), np.load(folder / "both.npy")
    shutil.rmtree(folder)
    two = _encode([torchrun, "--nproc_per_node", "2", "--master_port", "29519", "-m", "core"], workspace)
    assert one["processes"] == 1 and two["processes"] == 2 and one["notes"] == two["notes"] > 8
    assert json.loads((folder / "both.json").read_text()) == json.loads(meta_one)
    vectors_two = np.load(folder / "both.npy")
    assert vectors_two.shape == vectors_one.shape and np.array_equal(vectors_two, vectors_one)
    assert not list(folder.glob(".*part*"))  # the part files are gone
    # A second sharded encode finds everything cached and leaves the file as it was.
    again = _encode([torchrun, "--nproc_per_node", "2", "--master_port", "29521", "-m", "core"], workspace)
    assert again["notes"] == two["notes"] and np.array_equal(np.load(folder / "both.npy"), vectors_one)


def _encode(prefix, workspace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # `--run-name`: torchrun refuses `--run` as an ambiguous prefix of its own --run-path.
    argv = prefix + ["encode", "--workspace", str(workspace), "--run-name", "tiny-run", "--dataset", "toy",
                     "--shard-notes", "4"]
    done = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
