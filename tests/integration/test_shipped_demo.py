"""The shipped demo checkpoints: the app's start-up installs them, and they reproduce their own numbers."""
import json

import pytest

from core.demo import CHECKPOINTS_DIR, DEMO_VARIANTS, demo_run_name

pytestmark = pytest.mark.integration


def shipped():
    return {p.name: p for p in CHECKPOINTS_DIR.iterdir() if (p / "run.json").exists()} if CHECKPOINTS_DIR.is_dir() else {}


def test_every_variant_ships_small_trained_weights_only():
    folders = shipped()
    assert sorted(folders) == sorted(DEMO_VARIANTS)
    for variant, folder in folders.items():
        info = json.loads((folder / "run.json").read_text())
        assert info["run"] == demo_run_name(variant) and info["variant"] == variant and info["status"] == "finished"
        assert (folder / "model.safetensors").stat().st_size < 30e6  # connector, gate, head, LoRA in bf16
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


def test_app_start_up_installs_them_and_they_reproduce_their_recall(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTELLM2_CHECKPOINTS", raising=False)
    from app.backend import Backend
    from core import service

    backend = Backend(tmp_path / "ws")
    backend._startup()
    assert backend.startup.state == "ready", backend.startup.message
    names = {row["name"] for row in service.list_variants(tmp_path / "ws", "sample")}
    assert {demo_run_name(v) for v in DEMO_VARIANTS} <= names
    folder = shipped()["micl+late"]
    expected = json.loads((folder / "eval.json").read_text())["both"]
    measured = service.evaluate_variant(tmp_path / "ws", demo_run_name("micl+late"), "sample")
    assert measured["queries"] == expected["queries"] > 0
    assert measured["recall@10"] == pytest.approx(expected["recall@10"])
