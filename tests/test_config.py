"""Typed config: experiment YAMLs, key=value overrides, validation (madrec.config)."""

from __future__ import annotations

import pytest

from madrec.cli import main
from madrec.config import Config, config_from_dict, describe_keys, load_config, valid_keys
from madrec.errors import MadrecError

BASE = ["data_dir=/data", "sid_data_path=/sids.pt"]


def test_reference_experiment_is_the_method_configuration():
    cfg = load_config(["experiment=discrete_diffusion_train", *BASE])
    m, o = cfg.model, cfg.optim
    assert (m.n_layer, m.n_embd, m.n_head, m.d_ff, m.dropout) == (8, 128, 8, 3072, 0.25)
    assert (o.optimizer.lr, o.optimizer.weight_decay, o.scheduler.warmup_steps, o.grad_clip) == (
        3e-3,
        1e-3,
        10_000,
        1.0,
    )
    assert (cfg.batch_size, cfg.max_len, cfg.diffusion.schedule, cfg.eval.monitor) == (2048, 120, "linear", "recall@5")
    # the YAML restates the schema defaults: nothing differs from Config()
    assert cfg.to_dict() == {**Config().to_dict(), "data_dir": "/data", "sid_data_path": "/sids.pt"}


def test_tiny_experiment_overrides_part_of_the_reference():
    cfg = load_config(["experiment=tiny", *BASE])
    assert cfg.experiment == "tiny" and cfg.model.n_layer < 8 and cfg.trainer.accelerator == "cpu"
    assert cfg.optim.optimizer.weight_decay == 1e-3  # untouched keys keep the reference values


def test_overrides_users_know():
    cfg = load_config(
        [
            *BASE,
            "optim.optimizer.lr=1e-4",
            "batch_size=512",
            "trainer.max_steps=2e4",
            "train=false",
            "ckpt_path=/runs/x/checkpoints/best.ckpt",
            "eval.ks=[5,10,20]",
            "eval.beam_size=20",
            "paths.output_dir=/runs/y",
            "seed=7",
        ]
    )
    assert cfg.optim.optimizer.lr == 1e-4 and isinstance(cfg.optim.optimizer.lr, float)
    assert cfg.batch_size == 512 and cfg.trainer.max_steps == 20_000 and isinstance(cfg.trainer.max_steps, int)
    assert cfg.train is False and cfg.ckpt_path == "/runs/x/checkpoints/best.ckpt"
    assert cfg.eval.ks == [5, 10, 20] and cfg.output_dir == "/runs/y" and cfg.seed == 7


def test_string_values_stay_as_typed():
    cfg = load_config([*BASE, "output_dir=001", "data_dir=1e3"])
    assert cfg.output_dir == "001" and cfg.data_dir == "1e3"


def test_dropout_is_a_number_or_auto():
    assert load_config([*BASE, "model.dropout=0.3"]).model.dropout == 0.3
    assert load_config([*BASE, "model.dropout=auto"]).model.dropout == "auto"
    assert config_from_dict({"model": {"dropout": "auto"}}, "x.yaml").model.dropout == "auto"


def test_later_overrides_win_and_experiment_may_come_last():
    cfg = load_config(["batch_size=8", *BASE, "batch_size=16", "experiment=tiny"])
    assert cfg.batch_size == 16 and cfg.experiment == "tiny"


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(MadrecError) as err:
        load_config([*BASE, "optim.optimizer.learning_rate=1e-3"])
    msg = str(err.value)
    assert "optim.optimizer.learning_rate" in msg and "optim.optimizer.lr: float" in msg
    assert all(key in msg for key in valid_keys())


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("trainer.max_steps=1.5", "trainer.max_steps"),
        ("train=maybe", "train"),
        ("optim.optimizer.lr=fast", "optim.optimizer.lr"),
        ("eval.ks=5", "eval.ks"),
        ("model=big", "model"),
    ],
)
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(MadrecError, match=key):
        load_config([*BASE, override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_head=3", "heads of even size"),
        ("model.dropout=1.0", "model.dropout"),
        ("model.dropout=often", "model.dropout: must be in .0, 1. or auto"),
        ("eval.monitor=recall@20", "eval.monitor"),
        ("eval.beam_size=5", "eval.beam_size"),
        ("diffusion.schedule=sqrt", "unknown noise schedule"),
        ("batch_size=0", "batch_size"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("model.pool_history=true", "model.pool_history and diffusion.masking=every_item go together"),
        ("diffusion.masking=every_item", "model.pool_history and diffusion.masking=every_item go together"),
        ("model.catalogue_head=true", "catalogue_head: options of block diffusion over pooled items"),
        ("diffusion.item_loss_weight=1", "item_loss_weight: the item.s probability comes from model.catalogue_head"),
        ("model.pool_slot=true", "pool_slot: options of block diffusion"),
        ("model.slot_reads_previous=true", "slot_reads_previous: options of block diffusion"),
        ("diffusion.masking=next_item", "unknown masking policy 'next_item'"),
        ("rows=sliding", "rows: 'sliding' is not one of truncate, windows"),
        ("diffusion.next_item_copies=2", "next_item_copies"),
        ("diffusion.item_loss_weight=-1", "item_loss_weight must be >= 0"),
    ],
)
def test_inconsistent_values_are_refused(override, message):
    with pytest.raises(MadrecError, match=message):
        load_config([*BASE, override])


def test_required_inputs():
    with pytest.raises(MadrecError, match="ckpt_path.*train=false"):
        load_config([*BASE, "train=false"])
    with pytest.raises(MadrecError, match="data_dir"):
        load_config(["sid_data_path=/sids.pt"])
    with pytest.raises(MadrecError, match="sid_data_path"):
        load_config(["data_dir=/data"])
    load_config(["data_dir=/data", "ckpt_path=/last.ckpt"])  # resuming: the SIDs are in the checkpoint


def test_batch_must_split_over_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(MadrecError, match="WORLD_SIZE=3"):
        load_config([*BASE, "batch_size=1024"])
    assert load_config([*BASE, "batch_size=1023"]).batch_size == 1023


def test_experiment_files(tmp_path):
    with pytest.raises(MadrecError, match="known experiments: .*discrete_diffusion_train.*tiny"):
        load_config(["experiment=nope", *BASE])
    custom = tmp_path / "mine.yaml"
    custom.write_text("model:\n  n_layer: 3\n")
    assert load_config([f"experiment={custom}", *BASE]).model.n_layer == 3
    custom.write_text("model:\n  n_layers: 3\n")
    with pytest.raises(MadrecError, match=f"{custom}.*model.n_layers"):
        load_config([f"experiment={custom}", *BASE])
    custom.write_text("- a list\n")
    with pytest.raises(MadrecError, match="mapping"):
        load_config([f"experiment={custom}", *BASE])


def test_config_dir_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "site.yaml").write_text("batch_size: 128\n")
    monkeypatch.setenv("MADREC_CONFIG_DIR", str(tmp_path))
    assert load_config(["experiment=site", *BASE]).batch_size == 128
    assert load_config(["experiment=tiny", *BASE]).experiment == "tiny"  # the repo's still found


def test_round_trip_through_a_dict():
    cfg = load_config(["experiment=tiny", *BASE, "eval.ks=[1,5,10]"])
    assert config_from_dict(cfg.to_dict(), "test") == cfg


def test_cli_reports_bad_keys_in_one_line(capsys, cli_stderr):
    assert main(["train", *BASE, "bogus=1"]) == 2
    err = "\n".join(cli_stderr())
    assert err.startswith("madrec train: error:") and "bogus" in err
    assert main(["train", "--help"]) == 0
    assert "trainer.max_steps: int = 100000" in capsys.readouterr().out
    assert "trainer.max_steps: int = 100000" in describe_keys()


def test_a_saved_config_with_a_removed_option_at_its_neutral_value_still_loads():
    from madrec.config import config_from_dict

    saved = load_config(BASE).to_dict()
    saved["diffusion"] |= {"next_item_copies": 1, "loss_weight": "elbo", "history_item_prob": 0.0}
    assert config_from_dict(saved, "old.ckpt").diffusion.masking == "uniform"
    saved["diffusion"]["next_item_copies"] = 4
    with pytest.raises(MadrecError, match=r"old.ckpt: diffusion.next_item_copies=4 was removed"):
        config_from_dict(saved, "old.ckpt")


def test_training_validation_and_madrec_evaluate_read_one_decoding_schema():
    """The decoding keys are defined once (DecodeConfig) and checked once, whichever verb reads them."""
    import dataclasses

    from madrec.config import DecodeConfig, EvalConfig, EvaluateConfig, load_evaluate_config

    shared = [f.name for f in dataclasses.fields(DecodeConfig)]
    assert shared == ["beam_size", "ks", "batch_size"]
    for schema in (EvalConfig, EvaluateConfig):
        assert issubclass(schema, DecodeConfig)
        assert [f.name for f in dataclasses.fields(schema)][: len(shared)] == shared
    required = ["ckpt_path=c.ckpt", "data_dir=d", "output_dir=o"]
    cfg = load_evaluate_config([*required, "ks=[1,5]", "beam_size=5", "sweep=false"])
    assert (cfg.ks, cfg.beam_size, cfg.sweep) == ([1, 5], 5, False)
    with pytest.raises(MadrecError, match=r"config key beam_size: max\(ks\)=20 exceeds beam_size=10"):
        load_evaluate_config([*required, "ks=[5,20]"])
    with pytest.raises(MadrecError, match=r"config key eval.beam_size: max\(eval.ks\)=20 exceeds beam_size=10"):
        load_config(["experiment=tiny", "data_dir=d", "sid_data_path=s", "eval.ks=[5,20]", "eval.monitor=recall@5"])
    with pytest.raises(MadrecError, match="command line: config key beam_size: expected int, got 'wide'"):
        load_evaluate_config([*required, "beam_size=wide"])
