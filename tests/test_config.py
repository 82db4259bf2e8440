"""Configuration: defaults < YAML file < flags; unknown or mistyped settings fail loudly."""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("text,match", [
    ("lr: .nan\n", "'lr' must be a number"), ("lr: .inf\n", "'lr' must be a number"),
    ("lr: -1.0\n", "'lr' must be a number"), ("epochs: -1\n", "'epochs' must be a number"),
    ("epochs: 0\nfreeze_epochs: 0\n", "trains nothing"), ("bs: 0\n", "'bs' must be a number"),
    ("workers: -3\n", "'workers' must be a number"), ("threads: 100000\n", "'threads' must be a number"),
    ("valid_pct: 1.5\n", "'valid_pct'"), ("size: 0\n", "'size'"),
])
def test_settings_that_make_no_model_are_refused_up_front(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve_config(tmp_path / "c.yaml")


def test_yaml_1_1_exponents_are_numbers():
    """YAML 1.1 reads `1e-3` (no dot) as a string; a learning rate written so is still a number."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("lr: 1e-3\nmin_scale: 5E-1\n")
    cfg = resolve_config(f.name)
    assert cfg.lr == 0.001 and cfg.min_scale == 0.5
    Path(f.name).unlink()


def test_billion_laughs_and_tags_are_refused_fast_with_flat_memory(tmp_path):
    import resource

    rows = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    rows += [f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    (tmp_path / "laughs.yaml").write_text("\n".join(rows) + "\n")  # 9^9 strings if expanded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match="anchors or aliases"):
        resolve_config(tmp_path / "laughs.yaml")  # refused before expanding: the memory below shows it
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 20  # MB
    (tmp_path / "tag.yaml").write_text("arch: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="explicit YAML tag"):
        resolve_config(tmp_path / "tag.yaml")
    (tmp_path / "big.yaml").write_text("# " + "x" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="KB"):
        resolve_config(tmp_path / "big.yaml")


def test_cli_range_errors_are_one_line_exit_2(cli, tmp_path):
    for flags in (["--bs", "0"], ["--workers", "-3"], ["--threads", "100000"], ["--lr", "nan"]):
        res = cli("train", "--data", tmp_path, *flags)
        assert res.exit_code == 2 and "Traceback" not in res.output, (flags, res.output)


def test_batch_size_fits_the_training_part_unless_it_was_set():
    from petclf.config import DEFAULT_BS, fit_bs

    assert fit_bs(None, 5000) == (DEFAULT_BS, None)
    bs, why = fit_bs(None, 24)  # 24 < 32: the largest batch giving 4 steps an epoch
    assert bs == 6 and why.startswith("batch size 6 instead of 32") and "4 steps" in why
    assert fit_bs(None, 24, processes=2)[0] == 3 and fit_bs(None, 5, processes=2)[0] == 2  # a process's share
    assert fit_bs(24, 24) == (24, None) and fit_bs(12, 24, processes=2) == (12, None)  # set: kept if it fits
    for bs, n, procs in ((64, 24, 1), (16, 24, 2), (1, 24, 1)):
        with pytest.raises(ConfigError, match=rf"^--bs {bs} does not fit .*; pass --bs \d+ or leave --bs "
                                              "out$"):
            fit_bs(bs, n, procs)
    with pytest.raises(ConfigError, match="too few for one training batch"):
        fit_bs(None, 3, processes=2)


def test_a_batch_size_set_in_a_file_or_a_flag_is_told_from_the_default(tmp_path):
    (tmp_path / "c.yaml").write_text("bs: 64\n")
    assert resolve_config().bs is None and TrainConfig().bs is None  # not set: fitted to the data
    assert resolve_config(tmp_path / "c.yaml").bs == 64 and resolve_config(bs=32).bs == 32


def test_retired_settings_load_with_one_warning_line(tmp_path, capsys):
    """probe_c and probe_lr_scale do nothing now: a file, or an old run's config.yaml, setting them loads."""
    from petclf.config import RETIRED

    (tmp_path / "c.yaml").write_text("arch: resnet18\nprobe_c: 2.0\nprobe_lr_scale: 0.1\n")
    cfg = resolve_config(tmp_path / "c.yaml")
    assert cfg.arch == "resnet18" and not set(RETIRED) & set(config_keys())
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].startswith("warning: ") and "probe_c, probe_lr_scale" in said[0]
    assert "ignored" in said[0]
    with pytest.raises(ConfigError, match="probe_c"):
        resolve_config(probe_c=2.0)  # a flag or a keyword is a new setting: unknown, as any other


def test_an_old_run_that_set_retired_settings_resumes(tmp_path, capsys):
    from petclf.run import resume_config

    run = tmp_path / "run"
    run.mkdir()
    old = {**TrainConfig(arch="resnet18").to_dict(), "probe_c": 1.0, "probe_lr_scale": 0.1}
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    (run / "checkpoint.pth").write_bytes(b"")
    assert resume_config(run, {"threads": 1}).arch == "resnet18"
    assert "ignored" in capsys.readouterr().err


def test_every_setting_carries_its_help_and_panel():
    from petclf.config import CHOICES, RANGES, settings

    for f in settings():
        assert f.metadata["doc"].endswith(".") and f.metadata["panel"], f.name
    assert CHOICES["recipe"].__name__ == "Recipe" and str(RANGES["lr"]) == "(0, 10]"
