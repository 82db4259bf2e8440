"""petclf.run: the run folder is never written over, `latest` is only petclf's, resume takes only what was typed."""

from __future__ import annotations

import os

import pytest
import yaml

from petclf.config import TrainConfig, save_config
from petclf.errors import PetclfError
from petclf.run import discarded_on_failure, prepare_run_dir, resume_config, update_latest


def test_out_into_a_folder_of_the_users_files_is_refused(tmp_path):
    mine = tmp_path / "my_project"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own settings\n")
    (mine / "metrics.json").write_text("{}")
    with pytest.raises(PetclfError, match="already holds files"):
        prepare_run_dir(TrainConfig(out=str(mine)))
    assert (mine / "config.yaml").read_text() == "my: own settings\n" and sorted(os.listdir(mine)) == [
        "config.yaml", "metrics.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_run_dir(TrainConfig(out=str(empty))) == (empty, True)
    assert prepare_run_dir(TrainConfig(out=str(tmp_path / "new"))) == (tmp_path / "new", False)


def test_a_users_file_named_latest_is_never_replaced(tmp_path):
    run = tmp_path / "run1"
    run.mkdir()
    (run / "model.json").write_text("{}")
    (tmp_path / "latest").write_text("my notes about the latest experiments\n" * 3)
    assert update_latest(run) is None
    assert (tmp_path / "latest").read_text().startswith("my notes")
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").mkdir()  # a real folder of the user's
    assert update_latest(run) is None and (tmp_path / "latest").is_dir()
    (tmp_path / "latest").rmdir()
    assert update_latest(run).resolve() == run.resolve()  # petclf's own link is switched as before
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "model.json").write_text("{}")
    assert update_latest(run2).resolve() == run2.resolve()


def test_a_latest_file_petclf_wrote_is_switched(tmp_path):
    for name in ("run1", "run2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text("{}")
    (tmp_path / "latest").write_text("run1\n")  # what petclf writes where symlinks fail
    assert update_latest(tmp_path / "run2").resolve() == (tmp_path / "run2").resolve()


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    out, existed = prepare_run_dir(TrainConfig(out=str(tmp_path / "run")))
    with pytest.raises(RuntimeError), discarded_on_failure(out, fresh=True, existed=existed):
        (out / "config.yaml").write_text("x: 1\n")
        raise RuntimeError("no weights")
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    out, existed = prepare_run_dir(TrainConfig(out=str(mine)))
    with pytest.raises(KeyboardInterrupt), discarded_on_failure(out, fresh=True, existed=existed):
        (out / "data_report.json").write_text("{}")
        raise KeyboardInterrupt
    assert mine.is_dir() and not any(mine.iterdir())  # the user's empty folder stays, empty
    out, existed = prepare_run_dir(TrainConfig(out=str(tmp_path / "started")))
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(KeyboardInterrupt), discarded_on_failure(out, fresh=True, existed=existed):
        raise KeyboardInterrupt  # after the first checkpoint: kept, for --resume
    assert (out / "checkpoints" / "last.pt").is_file()


def test_resume_compares_what_was_typed_not_values(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(TrainConfig(arch="resnet18", epochs=3, out=str(run)), run / "config.yaml")
    with pytest.raises(PetclfError, match=r"--arch resnet34 \(the run has resnet18\)"):
        resume_config(run, {"arch": "resnet34"})  # resnet34 is the default: typed all the same
    with pytest.raises(PetclfError, match=r"--epochs 4 \(the run has 3\)"):
        resume_config(run, {"epochs": 4})
    cfg = resume_config(run, {"arch": "resnet18", "threads": 1, "workers": 0})
    assert cfg.arch == "resnet18" and cfg.threads == 1 and cfg.workers == 0 and cfg.resume == str(run)
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 3


def test_cli_resume_refuses_a_typed_default(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(TrainConfig(arch="resnet18", out=str(run)), run / "config.yaml")
    res = cli("train", "--resume", run, "--arch", "resnet34")
    assert res.exit_code == 2 and "--arch resnet34 (the run has resnet18)" in res.output


def test_a_run_killed_before_its_first_checkpoint_is_petclfs_to_start_again(tmp_path):
    run = tmp_path / "run"
    out, _ = prepare_run_dir(TrainConfig(out=str(run)))
    save_config(TrainConfig(out=str(run)), run / "config.yaml")  # the first file a run writes
    (run / "data_report.json").write_text("{}")  # then kill -9: no checkpoint
    assert prepare_run_dir(TrainConfig(out=str(run))) == (run, True)  # the same command starts it again
    assert resume_config(run, {}).out == str(run)  # and --resume takes it (train starts it from the beginning)
    other = tmp_path / "other"
    other.mkdir()
    save_config(TrainConfig(out=str(run)), other / "config.yaml")  # a config copied from elsewhere: not this run's
    with pytest.raises(PetclfError, match="already holds files"):
        prepare_run_dir(TrainConfig(out=str(other)))


def test_resume_of_a_folder_that_kept_nothing_says_to_run_the_command_again(tmp_path):
    with pytest.raises(PetclfError, match="nothing to resume .* same command, without --resume"):
        resume_config(tmp_path / "gone", {})
