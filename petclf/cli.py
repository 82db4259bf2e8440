"""`petclf <command>`: argument parsing and nothing else; the work is done by functions in the package.

    petclf --help
    petclf train --data data/oxford-iiit-pet --epochs 4
    petclf predict photo.jpg --model exports/latest

Exit codes: 0 done, 1 the job failed, 2 bad usage or bad input (one line on stderr, no traceback; set
PETCLF_DEBUG=1 for the traceback). Every default comes from the module that owns it (`TrainConfig` for
training, whose fields also make the flags of `train` and `lr-find`; `petclf.config` for the other commands),
never from a literal here. Nothing heavy (torch, fastai, Gradio, numpy) is imported before a command runs,
so --help and plain mistakes answer at once.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import typer
import typer.core

from petclf import demo as demo_defaults
from petclf.cli_data import cache_app, data_app
from petclf.cli_shell import HELP, fail, guarded, setting_option, with_settings
from petclf.config import (
    DEFAULT_MODEL,
    PREDICT_BS,
    REPORT_BS,
    REPORT_MIN_VAL,
    REPORT_TOP_LOSSES,
    SERVE_HOST,
    SERVE_PORT,
    TOPK,
    Backend,
    Layout,
    OutputFormat,
    TrainConfig,
    settings,
)
from petclf.errors import petclf_command
from petclf.version import __version__

# torch warns about its own deprecated jit at fastai import; users cannot act on it
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)

WORKFLOW = ("data", "train", "lr-find", "predict", "report", "serve", "export", "demo")  # --help's order


class WorkflowGroup(typer.core.TyperGroup):
    """Commands listed in the order of the work (typer lists sub-apps like `data` after every command)."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW))


app = typer.Typer(help="Fine-tune, serve and interpret pet-breed classifiers (Oxford-IIIT Pets, fastai + "
                       "timm).", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings=HELP, cls=WorkflowGroup)
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"petclf {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """petclf: fine-tune a pretrained timm model on Oxford-IIIT Pets with fastai, then serve and interpret
    it."""


# ------------------------------------------------------------------------------------------------ options

ModelOpt = typer.Option(DEFAULT_MODEL, "--model", "-m",
                        help="Trained model: a run folder, its model.json, or a `latest` link.")
BackendOpt = typer.Option(Backend.auto, "--backend", help="What runs the network: auto is onnxruntime on CPU "
                                                          "when model.onnx verifies, torch otherwise.")
OnnxOpt = typer.Option(False, "--onnx", help="Same as --backend onnx.")
UnsureOpt = typer.Option(None, "--unsure-below", min=0.0, max=1.0, metavar="P",
                         show_default="the model's own",
                         help="Below this top-class probability the answer lists the likely classes.")
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML file of settings (flags override it).")


# ------------------------------------------------------------------------------------------------ training


def _train_config(config: Path | None, flags: dict):
    """Defaults < --config < flags; with --resume, the saved run's settings, checked against what was
    typed."""
    from petclf.config import load_config_file, resolve_config

    if flags.get("resume") is None:
        return resolve_config(config, **flags)
    from petclf.run import resume_config

    typed = {k: v for k, v in flags.items() if v is not None}
    return resume_config(Path(flags["resume"]), {**(load_config_file(config) if config else {}), **typed})


def _check_data(data: str | None) -> None:
    """A missing --data folder is one line before torch and fastai load (10 s idle, a minute under load)."""
    from petclf.layouts import check_data_folder

    if data is not None:
        check_data_folder(data)


def _check_model(model: Path):
    """A missing or broken --model is one line before torch, fastai or Gradio load (the manifest is JSON);
    returns the parsed `Manifest`, for the command to use rather than parse again."""
    from petclf.bundle import read_manifest

    return read_manifest(model)


TRAIN_HELP = (f"Train a classifier on --data and export its run folder. From {TrainConfig().small_data} "
              "training photos per class (--small-data) the fastbook recipe: lr_find unless --lr is given, "
              "then fit_one_cycle on the head and on the unfrozen network; below it the probe: a logistic "
              "regression on the pretrained network's features, its error estimated by cross-validation. "
              "--recipe picks one.")


@app.command("train", help=TRAIN_HELP)
@guarded
@with_settings(f.name for f in settings())
def train_cmd(flags: dict, config: Path | None = ConfigOpt) -> None:
    """`petclf train`: its flags are TrainConfig's fields (petclf.config)."""
    from petclf.progress import stage

    cfg = _train_config(config, flags)
    _check_data(cfg.data)
    with stage("loading torch and fastai"):  # seconds on a cold start: the user sees the run begin at once
        from petclf.train import train, train_summary

    typer.echo(train_summary(train(cfg), petclf_command()))


@app.command("lr-find")
@guarded
@with_settings(f.name for f in settings() if f.metadata["lr_find"])
def lr_find_cmd(flags: dict, config: Path | None = ConfigOpt,
                out: Path | None = typer.Option(None, "--out", "-o", help="Folder for lr_find.png.",
                                                show_default="exports")) -> None:
    """Run fastai's lr_find on the training setup, save the plot and print the suggested learning rate."""
    cfg = _train_config(config, flags)
    _check_data(cfg.data)
    from petclf.train import run_lr_find

    found, png = run_lr_find(cfg, out)
    typer.echo(f"suggested lr {found.suggestion:.2e}{' (fallback)' if found.fallback else ''}; plot: {png}")


# ------------------------------------------------------------------------------------------ using a model


def _backend(backend: Backend, onnx: bool) -> str:
    """--backend, with --onnx as its shorthand."""
    return Backend.onnx.value if onnx else backend.value


@app.command("predict")
@guarded
def predict(paths: list[str] = typer.Argument(..., metavar="PATH...",
                                              help="Image files, folders (searched recursively) or globs."),
            model: Path = ModelOpt,
            topk: int = typer.Option(TOPK, "--topk", "-k", min=1, help="Breeds listed per image."),
            tta: bool = typer.Option(False, "--tta", help="Average with the horizontally flipped image."),
            bs: int = typer.Option(PREDICT_BS, "--bs", min=1, help="Images per forward pass."),
            fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
            out: Path | None = typer.Option(None, "--out", "-o",
                                            help="Write the results here instead of stdout."),
            backend: Backend = BackendOpt, onnx: bool = OnnxOpt,
            unsure_below: float | None = UnsureOpt) -> None:
    """Predict breeds for images, in the order given: a species verdict (cat, dog or not a pet) and a breed
    verdict per image. Unreadable images get an error row; exit code 1 if any failed."""
    from petclf.io import check_file_writable, stream_errors, write_output

    if len(paths) == 1 and not any(c in paths[0] for c in "*?[") and not os.path.lexists(paths[0]):
        fail(f"no such file or folder: {paths[0]}")  # one named photo: a line, not a table with one error row
    if out is not None:
        check_file_writable(out)  # before the work, not after it
    _check_model(model)
    from petclf.predict import format_rows, load_model

    predictor = load_model(model, backend=_backend(backend, onnx))
    if unsure_below is not None:
        predictor.unsure_below = unsure_below
    rows = list(predictor.predict_paths(paths, bs=bs, tta=tta))
    # file names that are not UTF-8 come out as their own bytes, on stdout as in --out (no UnicodeEncodeError)
    text = format_rows(rows, fmt, topk, predictor.display, predictor.noun)
    data = text.encode("utf-8", "surrogateescape")
    if out is None:
        with stream_errors("standard output"):
            typer.echo(data, nl=False)
    else:
        write_output(out, data)
    failed = sum(not r.ok for r in rows)
    if out is not None or failed:
        where = f"; results in {out}" if out else ""
        typer.echo(f"{len(rows) - failed} predicted, {failed} failed{where}", err=True)
    if failed:
        raise typer.Exit(1)


@app.command("report")
@guarded
def report(model: Path = ModelOpt,
           data: Path | None = typer.Option(None, "--data", "-d", help="Data folder.",
                                            show_default="the one the run recorded"),
           split: str = typer.Option("valid", "--split", metavar="[valid|test|all|FILE]",
                                     help="valid (the run's own split), test (Pets: the official test "
                                          "list; folders: test/<label>/; csv: rows whose split is test), "
                                          "all (every photo of a new labelled --data folder) or a FILE "
                                          "naming the images."),
           out: Path | None = typer.Option(None, "--out", "-o", show_default="MODEL/report",
                                           help="Folder for report.html, report.json and figures/."),
           bs: int = typer.Option(REPORT_BS, "--bs", min=1, help="Images per forward pass."),
           min_val: int = typer.Option(REPORT_MIN_VAL, "--min-val", min=1,
                                       help="Smallest count listed as a confused pair."),
           top_k: int = typer.Option(REPORT_TOP_LOSSES, "--top-losses", min=1,
                                     help="Top-loss images shown with Grad-CAM."),
           device: str | None = setting_option("device", panel=False),
           labels: Path | None = typer.Option(None, "--labels", show_default="the one the run recorded",
                                              help="CSV of file,label for --data (csv layout).")) -> None:
    """Write the interpretation report: one self-contained HTML page, plus JSON and PNG figures."""
    manifest = _check_model(model)
    from petclf.report import write_report

    paths = write_report(model, data=data, split=split, out=out, bs=bs, min_val=min_val, top_k=top_k,
                         device=device, progress=True, labels=labels, manifest=manifest)
    typer.echo(f"report: {paths['html']}")


@app.command("serve")
@guarded
def serve(model: Path = ModelOpt,
          host: str = typer.Option(SERVE_HOST, help="Interface to listen on (0.0.0.0 exposes it to the "
                                                    "network)."),
          port: int = typer.Option(SERVE_PORT, help="Port to listen on (1-65535)."),
          share: bool = typer.Option(False, "--share", help="Also publish a temporary public gradio.live "
                                                            "link."),
          auth: str | None = typer.Option(None, "--auth", metavar="USER:PASS", envvar="PETCLF_AUTH",
                                          help="Require this login (also read from PETCLF_AUTH, which keeps "
                                               "the password out of the process list)."),
          backend: Backend = BackendOpt, onnx: bool = OnnxOpt,
          title: str | None = typer.Option(None, "--title", help="The page's heading.",
                                           show_default="from the model: 'Which breed is this pet?' for "
                                                        "Pets, 'Which class is this?' otherwise"),
          unsure_below: float | None = UnsureOpt) -> None:
    """Serve the Gradio demo: upload a photo, see the class (Pets: breed, cat or dog), and Grad-CAM (always
    run by torch)."""
    from petclf.address import check_address, parse_auth

    if auth is None and os.environ.get("PETCLF_AUTH") == "":
        auth = ""  # click skips an empty variable: refuse it like --auth '' rather than serve with no login
    login = parse_auth(auth)
    check_address(host, port)  # port, address and model first: one line at once, not after Gradio and torch
    _check_model(model)
    from petclf.app import main as serve_demo

    serve_demo(model, host=host, port=port, share=share, backend=_backend(backend, onnx), auth=login,
               title=title, unsure_below=unsure_below)


@app.command("export")
@guarded
def export(model: Path = ModelOpt,
           onnx: bool = typer.Option(False, "--onnx", help="Write model.onnx beside the bundle, checked "
                                                           "against torch.")) -> None:
    """Export a bundle to other runtimes (ONNX), checking the outputs against torch."""
    from petclf.onnx import export_onnx, match_summary

    if not onnx:
        fail("nothing to export: pass --onnx")
    info = export_onnx(model)
    typer.echo(f"wrote {Path(model) / info['file']} (opset {info['opset']}, {match_summary(info)})")


@app.command("demo")
@guarded
def demo_cmd(out: Path = typer.Option(demo_defaults.OUT, "--out", "-o",
                                      help="Folder for the synthetic data and run."),
             epochs: int = typer.Option(demo_defaults.EPOCHS, "--epochs", "-e",
                                        help="Epochs after unfreezing."),
             layout: Layout = typer.Option(Layout.pets, "--layout", help="The synthetic data's layout: pets, "
                                                                         "folders or csv.")) -> None:
    """The whole pipeline offline on CPU in a few minutes: synthetic data, a small model, train, export,
    report."""
    from petclf.progress import stage

    with stage("loading torch and fastai"):
        import petclf.train  # noqa: F401 - the slow imports (torch, fastai, timm), under the bar
        from petclf.demo import run_demo

    if layout == Layout.auto:
        fail("--layout for the demo is pets, folders or csv")
    run_demo(out, epochs=epochs, layout=layout.value)
