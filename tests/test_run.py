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


# ---------------------------------------------------------------------------------------------------- run files


def test_run_dir_names_the_files_the_writers_write(tmp_path):
    from petclf.bundle import MANIFEST_NAME, WEIGHTS_NAME
    from petclf.data import EXAMPLES_DIR, REPORT_NAME
    from petclf.onnx import ONNX_NAME
    from petclf.oof import OOF_NAME
    from petclf.runfiles import RunDir

    run = RunDir(tmp_path)
    assert [p.name for p in (run.weights, run.manifest, run.onnx, run.oof, run.data_report, run.examples)] == [
        WEIGHTS_NAME, MANIFEST_NAME, ONNX_NAME, OOF_NAME, REPORT_NAME, EXAMPLES_DIR]
    assert run.last == tmp_path / "checkpoints" / "last.pt" and run.best.parent == run.checkpoints
    assert RunDir(str(tmp_path)).root == tmp_path  # a str is taken as a path


def test_metrics_json_reads_back_as_written_by_a_run(tiny_run):
    import json

    from petclf.runfiles import RunDir, RunMetrics

    run = RunDir(tiny_run.run_dir)
    written = json.loads(run.metrics.read_text())
    assert RunMetrics.read(run.metrics).to_json() == written
    assert "estimate" not in written  # a fine-tuned run's error is on its validation split


def test_a_damaged_metrics_json_is_one_line_naming_it(tmp_path):
    import json

    from petclf.runfiles import RunMetrics

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"error_rate": 0.1, "accuracy": 0.9}))
    with pytest.raises(PetclfError, match=r"metrics\.json: the key 'valid_loss' is missing"):
        RunMetrics.read(path)
    path.write_text(json.dumps({"error_rate": "0.1", "accuracy": 0.9, "valid_loss": 0.3}))
    with pytest.raises(PetclfError, match=r"metrics\.json: 'error_rate' is a str, not a number"):
        RunMetrics.read(path)
    path.write_text("{")
    with pytest.raises(PetclfError, match="cannot read"):
        RunMetrics.read(path)
    old = {"error_rate": 0.1, "accuracy": 0.9, "valid_loss": 0.3, "recipe": "fastbook"}  # an early run's
    assert RunMetrics.from_json(old).recipe == "fastbook"
