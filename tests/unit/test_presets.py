"""The preset table (core/train/presets.py) is the one source of presets: it round-trips, every preset
builds valid configs for every variant, the CLI offers exactly its names, and the cpu preset keeps the
new modules' learning rate that the image path needs."""
import json
from dataclasses import fields

import pytest

from core.errors import WorkbenchError
from core.models.note_encoder import VARIANTS, NoteEncoderConfig
from core.train.presets import DEFAULT_PRESET, PRESET_TABLE, PRESETS, Preset, get_preset, preset_descriptions
from core.train.trainer import TrainConfig, preset_configs


def test_the_table_round_trips_through_json():
    for preset in PRESET_TABLE:
        assert Preset.from_dict(json.loads(json.dumps(preset.as_dict()))) == preset
    assert PRESETS == tuple(p.name for p in PRESET_TABLE) and len(set(PRESETS)) == len(PRESETS)
    assert DEFAULT_PRESET in PRESETS
    assert list(preset_descriptions()) == list(PRESETS) and all(preset_descriptions().values())


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_valid_configs_for_every_variant(name):
    preset = get_preset(name)
    # A misspelt field in the table would otherwise be dropped or fail only when someone trains with it.
    assert set(preset.train) <= {f.name for f in fields(TrainConfig)}
    assert set(preset.model) <= {f.name for f in fields(NoteEncoderConfig)}
    for variant in VARIANTS:
        train_values, model = preset_configs(name, variant)
        config = TrainConfig(dataset="d", variant=variant, run="r", preset=name, **train_values)
        for key, value in preset.train.items():
            assert getattr(config, key) == value
        for key, value in preset.model.items():
            assert getattr(model, key) == value
        assert model.variant == variant
        assert NoteEncoderConfig.from_dict(model.to_dict()) == model


def test_overrides_win_and_the_table_stays_unchanged():
    train_values, model = preset_configs("cpu", "micl", lr_new=5e-5, qformer_layers=3)
    assert train_values["lr_new"] == 5e-5 and model.qformer_layers == 3
    train_values["batch_pairs"] = 999  # a caller editing its copy must not change the next run's preset
    assert preset_configs("cpu", "micl")[0]["batch_pairs"] == 16
    with pytest.raises(TypeError):
        get_preset("cpu").train["lr_new"] = 1e-3
    with pytest.raises(WorkbenchError, match="unknown preset 'fast'; choose one of tiny, cpu, cpu-wide, reference"):
        preset_configs("fast", "text")


def test_the_cpu_preset_trains_new_modules_at_1e_4():
    # At 1e-3 Adam's first steps collapse the fresh connector and the image side never learns
    # (docs/METHOD.md, "What was measured"); 1e-4 keeps the picture.
    assert get_preset("cpu").train["lr_new"] == 1e-4
    for variant in VARIANTS:
        assert preset_configs("cpu", variant)[0]["lr_new"] == 1e-4


def test_the_cli_offers_the_tables_presets():
    from core.cli import build_parser

    parser = build_parser()
    train_parser = next(action for action in parser._subparsers._group_actions[0].choices.values()
                        if action.prog.endswith(" train"))
    preset_option = next(a for a in train_parser._actions if "--preset" in a.option_strings)
    assert tuple(preset_option.choices) == PRESETS and preset_option.default == DEFAULT_PRESET
    for preset in PRESET_TABLE:
        assert preset.description in preset_option.help


def test_the_apps_preset_list_is_the_tables():
    """The Fine-tune tab's picker shows the table's presets with their descriptions, in its order."""
    from app.tabs import finetune
    from core.train.presets import preset_descriptions

    assert list(finetune.PRESETS) == list(PRESETS)
    assert finetune.PRESETS == preset_descriptions()


def test_cpu_wide_is_the_cpu_recipe_with_a_cached_wide_batch():
    """cpu-wide must differ from cpu only in the batch width and the chunking that keeps its memory: a
    learning rate or a Q-Former size drifting between the two would confound any comparison of them."""
    cpu, wide = get_preset("cpu"), get_preset("cpu-wide")
    assert dict(wide.model) == dict(cpu.model)
    differing = {key for key in set(cpu.train) | set(wide.train) if cpu.train.get(key) != wide.train.get(key)}
    assert differing == {"batch_pairs", "grad_cache_chunk"}
    assert wide.train["batch_pairs"] > cpu.train["batch_pairs"] == wide.train["grad_cache_chunk"]
    assert wide.train["batch_pairs"] % wide.train["grad_cache_chunk"] == 0
    train_values, _ = preset_configs("cpu-wide", "micl+late")
    assert TrainConfig(dataset="d", variant="micl+late", run="r", preset="cpu-wide", **train_values).grad_cache_chunk == 16
