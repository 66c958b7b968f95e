"""Shipped demo checkpoints become ordinary finished runs of a workspace, exactly once."""
import json

import numpy as np
import torch

from core.demo import export_checkpoint, install_checkpoints
from core.models.note_encoder import NoteEncoder, NoteEncoderConfig
from core.workspace import Workspace
from tests.unit.model_fixtures import sample_notes


def make_run(workspace: Workspace, run: str, variant: str) -> NoteEncoder:
    model = NoteEncoder(NoteEncoderConfig.tiny(variant), device="cpu")
    with torch.no_grad():
        for parameter in model.trainable_groups()["new_modules"]:
            parameter.add_(0.05 * torch.randn_like(parameter))
    folder = workspace.run_dir(run)
    model.save_pretrained(folder)
    (folder / "run.json").write_text(json.dumps({"run": run, "dataset": "sample", "variant": variant,
                                                 "status": "finished", "step": 3}))
    return model


def test_export_then_install_gives_the_same_model_as_a_finished_run(tmp_path):
    trained_in = Workspace.open(tmp_path / "a")
    original = make_run(trained_in, "demo-micl-late", "micl+late")
    shipped = export_checkpoint(trained_in, "demo-micl-late", tmp_path / "shipped" / "micl+late",
                                evaluation={"both": {"recall@10": 0.5}})
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "eval.json", "model.safetensors", "run.json"]

    user = Workspace.open(tmp_path / "b")
    assert install_checkpoints(user, tmp_path / "shipped") == ["demo-micl-late"]
    assert install_checkpoints(user, tmp_path / "shipped") == ["demo-micl-late"]  # idempotent
    installed = NoteEncoder.from_pretrained(user.run_dir("demo-micl-late"), device="cpu")
    # bf16 storage: equal to the trained model up to bf16 rounding, and far from a fresh one.
    trained_vectors = original.encode(sample_notes())
    np.testing.assert_allclose(installed.encode(sample_notes()), trained_vectors, atol=0.05)
    assert json.loads((user.run_dir("demo-micl-late") / "run.json").read_text())["status"] == "finished"


def test_install_never_overwrites_a_run_trained_locally(tmp_path):
    source = Workspace.open(tmp_path / "a")
    make_run(source, "demo-basic", "basic")
    export_checkpoint(source, "demo-basic", tmp_path / "shipped" / "basic")
    user = Workspace.open(tmp_path / "b")
    local = make_run(user, "demo-basic", "basic")
    before = (user.run_dir("demo-basic") / "model.safetensors").read_bytes()
    assert install_checkpoints(user, tmp_path / "shipped") == []
    assert (user.run_dir("demo-basic") / "model.safetensors").read_bytes() == before
    assert local is not None


def test_missing_checkpoint_folder_installs_nothing(tmp_path):
    assert install_checkpoints(Workspace.open(tmp_path / "w"), tmp_path / "nothing-here") == []


def test_a_newer_shipped_checkpoint_replaces_the_one_installed_from_an_older_ship(tmp_path):
    """Rebuilt demo checkpoints reach workspaces that installed the previous ones (a stale install would keep
    serving the old weights), while a run trained locally under the same name stays untouched (above)."""
    source = Workspace.open(tmp_path / "a")
    make_run(source, "demo-basic", "basic")
    export_checkpoint(source, "demo-basic", tmp_path / "old" / "basic")
    user = Workspace.open(tmp_path / "b")
    assert install_checkpoints(user, tmp_path / "old") == ["demo-basic"]
    newer = make_run(source, "demo-basic", "basic")  # retrained: other weights
    export_checkpoint(source, "demo-basic", tmp_path / "new" / "basic")
    assert install_checkpoints(user, tmp_path / "new") == ["demo-basic"]
    assert ((user.run_dir("demo-basic") / "model.safetensors").read_bytes()
            == (tmp_path / "new" / "basic" / "model.safetensors").read_bytes())
    installed = NoteEncoder.from_pretrained(user.run_dir("demo-basic"), device="cpu")
    np.testing.assert_allclose(installed.encode(sample_notes()), newer.encode(sample_notes()), atol=0.05)
    assert not [p for p in user.runs_dir.iterdir() if p.name.startswith(".")]  # nothing half-removed left
