"""Configuration: defaults < YAML file < flags; unknown or mistyped settings fail loudly."""

from __future__ import annotations

import pytest
import yaml

from petclf.config import ConfigError, TrainConfig, config_keys, resolve_config, save_config


def test_layering_defaults_file_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("arch: resnet18\nepochs: 7\nlr: 1\n")
    cfg = resolve_config(f, epochs=2, lr=None)
    assert (cfg.arch, cfg.epochs, cfg.lr, cfg.bs) == ("resnet18", 2, 1.0, TrainConfig().bs)
    assert isinstance(cfg.lr, float)


def test_unknown_keys_fail_in_file_and_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epcohs: 3\n")
    with pytest.raises(ConfigError, match="epcohs"):
        resolve_config(f)
    with pytest.raises(ConfigError, match="bogus"):
        resolve_config(bogus=1)


@pytest.mark.parametrize("text,match", [("epochs: three\n", "epochs"), ("pretrained: 1\n", "pretrained"),
                                        ("- a\n- b\n", "mapping"), ("a: [\n", "YAML")])
def test_bad_files_are_one_line_errors(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve_config(f)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "none.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = resolve_config(arch="resnet18", size=64)
    path = save_config(cfg, tmp_path / "config.yaml")
    assert list(yaml.safe_load(path.read_text())) == config_keys()
    assert resolve_config(path) == cfg


@pytest.mark.parametrize("key,value", [("recipe", "magic"), ("precision", "fp8"), ("channels_last", "yes"),
                                       ("bn_freeze", "maybe"), ("device", "tpu"), ("device", "cuda:x")])
def test_choices_are_checked_for_files_flags_and_python_alike(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**{key: value})
    (tmp_path / "c.yaml").write_text(f"{key}: {value}\n")
    with pytest.raises(ConfigError, match=key):
        resolve_config(tmp_path / "c.yaml")


def test_cli_lists_the_choices_and_refuses_others(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps help at the terminal's width
    res = cli("train", "--help")
    assert "auto|fastbook|probe" in res.output and "auto|cpu|mps|cuda|cuda:N" in res.output
    for flag, bad in (("--recipe", "magic"), ("--device", "tpu"), ("--precision", "fp8")):
        res = cli("train", flag, bad)
        assert res.exit_code == 2 and flag in res.output
