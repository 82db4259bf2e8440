"""`petclf <command>`: argument parsing and nothing else; the work is done by functions in the package.

    petclf --help
    petclf data check --data data/oxford-iiit-pet
    petclf data synth data/synth --classes 4 --per-class 20 --bad

Exit codes: 0 done, 1 the job failed, 2 bad usage or bad input (one line on stderr, no traceback;
set PETCLF_DEBUG=1 for the traceback). Choices are listed in --help; every default comes from the module that owns
it (`TrainConfig` for training, `petclf.config` for the other commands), never from a literal here.
"""

from __future__ import annotations

import errno
import functools
import os
import warnings
from enum import Enum
from pathlib import Path

import typer
import typer.core

from petclf import demo as demo_defaults
from petclf import synth as synth_defaults
from petclf.config import (
    DEFAULT_BS,
    DEFAULT_MODEL,
    DEVICES,
    PREDICT_BS,
    REPORT_BS,
    REPORT_MIN_VAL,
    REPORT_TOP_LOSSES,
    SERVE_HOST,
    SERVE_PORT,
    SPLITS,
    TOPK,
    Backend,
    ConfigError,
    Layout,
    LogTo,
    OutputFormat,
    Precision,
    Recipe,
    Switch,
    TrainConfig,
    check_device,
)
from petclf.errors import PetclfError, as_typed, petclf_command
from petclf.version import __version__

# torch warns about its own deprecated jit at fastai import; users cannot act on it
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)

D = TrainConfig()  # defaults shown in --help are read from here, their one source
HELP = {"help_option_names": ["-h", "--help"]}

WORKFLOW = ("data", "train", "lr-find", "predict", "report", "serve", "export", "demo")  # --help lists them so


class WorkflowGroup(typer.core.TyperGroup):
    """Commands listed in the order of the work (typer lists sub-apps like `data` after every command)."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW))


app = typer.Typer(help="Fine-tune, serve and interpret pet-breed classifiers (Oxford-IIIT Pets, fastai + timm).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, context_settings=HELP,
                  cls=WorkflowGroup)
data_app = typer.Typer(help="Inspect and generate datasets.", no_args_is_help=True, context_settings=HELP)
app.add_typer(data_app, name="data")
cache_app = typer.Typer(help="Show or clear the feature cache (what `petclf train` reuses between runs).",
                        no_args_is_help=True, context_settings=HELP)
app.add_typer(cache_app, name="cache")


def fail(msg: str, code: int = 2) -> None:
    """Print one line to stderr and exit with `code`."""
    typer.echo(f"error: {as_typed(msg)}", err=True)
    raise typer.Exit(code)


def guarded(fn):
    """Turn petclf's user-facing errors into one line and exit 2, other failures into one line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except PetclfError as e:
            if os.environ.get("PETCLF_DEBUG"):
                raise
            fail(str(e), 2)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except OSError as e:
            if os.environ.get("PETCLF_DEBUG") or e.errno != errno.ENOSPC:
                raise
            fail(f"disk full writing {e.filename or 'a file'}; free some space and run again", 1)
        except Exception as e:  # noqa: BLE001 - the job failed; say so in one line
            if os.environ.get("PETCLF_DEBUG"):
                raise
            fail(f"{type(e).__name__}: {e}", 1)

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"petclf {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """petclf: fine-tune a pretrained timm model on Oxford-IIIT Pets with fastai, then serve and interpret it."""


def _device(value: str | None) -> str | None:
    """--device's parser: a usage error (exit 2) for a device petclf does not know."""
    try:
        return None if value is None else check_device(value)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None


def _value(v):
    """Enums and paths as the plain strings the settings hold."""
    return v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v


# ---------------------------------------------------------------------------------------------------- options

DataOpt = typer.Option(None, "--data", "-d", help="Pets folder (DIR/images), a folder per class (DIR/<label>/, "
                                                  "DIR/train|valid/<label>/) or the CSV's base folder; default "
                                                  "data/oxford-iiit-pet, downloaded when missing.")
LayoutOpt = typer.Option(None, "--layout", help="How --data is read: auto detects it; pets (<breed>_<n>.jpg), folders "
                                                "(DIR/<label>/), csv (--labels).", show_default=str(D.layout))
LabelsOpt = typer.Option(None, "--labels", help="CSV of file,label (optional split or is_valid), files relative to "
                                                "--data: the csv layout.")
GroupsOpt = typer.Option(None, "--groups", help="CSV of label,<group name>: a second level (Pets: cat/dog built in).")
SplitOpt = typer.Option(None, "--split", metavar=f"[{'|'.join(SPLITS)}]",
                        help="Validation split: random (valid_pct, seed), official (annotations/test.txt) or a "
                             "FILE naming the validation images.", show_default=str(D.split))
DeviceOpt = typer.Option(None, "--device", parser=_device, metavar=f"[{'|'.join(DEVICES)}]",
                         autocompletion=lambda: list(DEVICES[:-1]),
                         help="auto picks cuda > mps > cpu.", show_default=str(D.device))
ModelOpt = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Trained model: a run folder, its model.json, or "
                                                             "a `latest` link.")
BackendOpt = typer.Option(Backend.auto, "--backend", help="What runs the network: auto is onnxruntime on CPU when "
                                                          "model.onnx verifies, torch otherwise.")
UnsureOpt = typer.Option(None, "--unsure-below", min=0.0, max=1.0, metavar="P", show_default="the model's own",
                         help="Below this top-class probability the answer lists the likely classes.")
# Training flags default to None so that the layering defaults < --config FILE < flags holds (petclf.config).
ArchOpt = typer.Option(None, "--arch", "-a", help="timm model name.", show_default=str(D.arch))
WeightsOpt = typer.Option(None, "--weights", help="Local timm state dict (.pth/.safetensors) instead of the hub.")
PretrainedOpt = typer.Option(None, "--pretrained/--no-pretrained", help="Start from ImageNet weights.",
                             show_default="pretrained" if D.pretrained else "no-pretrained")
BsOpt = typer.Option(None, "--bs", min=1, help="Batch size (per process).",
                     show_default=f"{DEFAULT_BS}, fewer when the training part is small")
SizeOpt = typer.Option(None, "--size", min=1, help="Training crop size in px.", show_default=str(D.size))
PresizeOpt = typer.Option(None, "--presize", min=1, help="Item resize before batch augmentation.",
                          show_default=str(D.presize))
SeedOpt = typer.Option(None, "--seed", help="Seed of the split and the run.", show_default=str(D.seed))
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML file of settings (flags override it).")
RecipeOpt = typer.Option(None, "--recipe", help=f"auto: probe below {D.small_data} training images per class, "
                                                f"fastbook otherwise.", show_default=str(D.recipe))
WorkersOpt = typer.Option(None, "--workers", min=0, help="DataLoader workers.",
                          show_default="from the device and cores")


# ---------------------------------------------------------------------------------------------------- data


@data_app.command("check")
@guarded
def data_check(data: Path | None = DataOpt, layout: Layout | None = LayoutOpt, labels: Path | None = LabelsOpt,
               groups: Path | None = GroupsOpt, split: str | None = SplitOpt,
               valid_pct: float = typer.Option(D.valid_pct, help="Validation share of the random split."),
               seed: int = typer.Option(D.seed, help="Seed of the random split."),
               report: Path | None = typer.Option(None, help="Folder to write data_report.json into."),
               no_cache: bool = typer.Option(False, "--no-cache", help="Decode every image again.")) -> None:
    """Say which layout --data has and why, verify every image, count classes and split sizes, list bad files.
    Exits 2 if training could not go on."""
    from petclf.data import load_pets
    from petclf.layouts import read_groups
    from petclf.progress import bar

    with bar("verifying images") as progress:
        pets = load_pets(data, split=split or D.split, valid_pct=valid_pct, seed=seed, use_cache=not no_cache,
                         progress=progress, layout=_value(layout) or D.layout, labels=labels)
    group_name, named = read_groups(groups, pets.vocab) if groups else ("species", None)
    typer.echo(pets.report.summary())
    if (note := _probe_note(pets)) is not None:
        typer.echo(note)
    _print_class_table(pets.report.class_counts, group_name, named)
    if report is not None:
        typer.echo(f"data report: {pets.report.save(report)}")


def _probe_note(pets) -> str | None:
    """What `data check` adds where `auto` would train the probe: the split it printed is not the one used."""
    from collections import Counter
    from statistics import median

    per_class = Counter(pets.labels[i] for i in pets.train_idx)
    if not per_class or median(per_class.values()) >= D.small_data:
        return None
    return (f"note: under {D.small_data} training images per class, `petclf train` (recipe auto) trains the "
            f"probe: it uses no split but all {len(pets.fit_idx)} photos, and estimates its error by k-fold "
            "cross-validation")


def _print_class_table(counts: dict[str, int], group_name: str, groups: dict[str, str] | None) -> None:
    """Classes and their image counts, with their group (Pets: species) when there are groups."""
    from rich.console import Console
    from rich.table import Table

    from petclf.labels import display_name, pets_groups
    from petclf.text import as_terminal

    groups = groups or pets_groups(list(counts))
    table = Table("class", box=None, pad_edge=False)
    for head in ([group_name] if groups else []) + ["images"]:
        table.add_column(as_terminal(head))
    for c, n in counts.items():
        table.add_row(*map(as_terminal, (display_name(c), *([groups[c]] if groups else []))), str(n))
    Console(width=100, highlight=False).print(table)


@data_app.command("synth")
@guarded
def data_synth(out: Path = typer.Argument(..., help="Folder to write the images into."),
               layout: Layout = typer.Option(Layout.pets, "--layout", help="pets (<breed>_<n>.jpg), folders "
                                             "(DIR/<class>/) or csv (DIR/images/ + DIR/labels.csv)."),
               split_dirs: bool = typer.Option(False, "--split-dirs", help="folders: DIR/train|valid/<class>/."),
               classes: int = typer.Option(synth_defaults.CLASSES, help="Number of classes (2-37 breeds; 2-8 own "
                                                                        "names for folders and csv)."),
               per_class: int = typer.Option(synth_defaults.PER_CLASS, help="Images per breed."),
               size: int = typer.Option(synth_defaults.SIZE, help="Image side in pixels."),
               seed: int = typer.Option(synth_defaults.SEED, help="Random seed."),
               bad: bool = typer.Option(False, "--bad", help="Also plant the known bad files of real Pets.")) -> None:
    """Write a synthetic dataset in any layout that a small CNN learns in a minute on CPU."""
    from petclf.synth import synth_data

    if layout == Layout.auto:
        fail("--layout for synth is pets, folders or csv")
    planted = synth_data(out, layout.value, n_classes=classes, per_class=per_class, size=size, seed=seed, bad=bad,
                         split_dirs=split_dirs)
    typer.echo(f"wrote {classes * per_class} images of {classes} classes to {out} ({layout.value} layout)")
    for name, verdict in planted.items():
        typer.echo(f"  planted {name} ({verdict})")


# ---------------------------------------------------------------------------------------------------- cache


@cache_app.command("info")
@guarded
def cache_info() -> None:
    """Where the feature cache is, its entries, its size and its cap (PETCLF_CACHE_DIR, PETCLF_CACHE_MAX)."""
    from petclf.featcache import FeatureCache

    typer.echo(FeatureCache.default().info().summary())


@cache_app.command("clear")
@guarded
def cache_clear() -> None:
    """Delete every cached feature (the next `petclf train` computes them again)."""
    from petclf.featcache import FeatureCache

    cache = FeatureCache.default()
    typer.echo(f"deleted {cache.clear()} files from {cache.root}")


# ---------------------------------------------------------------------------------------------------- training


def _train_config(config: Path | None, **flags):
    """Defaults < --config < flags; with --resume, the saved run's settings, checked against what was typed."""
    from petclf.config import load_config_file, resolve_config

    flags = {k: _value(v) for k, v in flags.items()}
    if flags.get("resume") is None:
        return resolve_config(config, **flags)
    from petclf.run import resume_config

    typed = {**(load_config_file(config) if config else {}), **{k: v for k, v in flags.items() if v is not None}}
    return resume_config(Path(flags["resume"]), typed)


def _check_data(data: str | None) -> None:
    """A missing --data folder is one line before torch and fastai load (10 s idle, a minute under load)."""
    from petclf.layouts import check_data_folder

    if data is not None:
        check_data_folder(data)


def _check_model(model: Path):
    """A missing or broken --model is one line before torch, fastai or Gradio load (the manifest is JSON); returns
    the parsed `Manifest`, for the command to use rather than parse again."""
    from petclf.bundle import read_manifest

    return read_manifest(model)


@app.command("train")
@guarded
def train_cmd(data: Path | None = DataOpt, layout: Layout | None = LayoutOpt, labels: Path | None = LabelsOpt,
              groups: Path | None = GroupsOpt, arch: str | None = ArchOpt, weights: Path | None = WeightsOpt,
              pretrained: bool | None = PretrainedOpt,
              epochs: int | None = typer.Option(None, "--epochs", "-e", help="Epochs after unfreezing.",
                                                show_default=str(D.epochs)),
              freeze_epochs: int | None = typer.Option(
                  None, "--freeze-epochs", help="Epochs on the head alone first.", show_default=str(D.freeze_epochs)),
              lr: float | None = typer.Option(None, "--lr", help="Base learning rate.", show_default="lr_find's"),
              bs: int | None = BsOpt, size: int | None = SizeOpt, presize: int | None = PresizeOpt,
              split: str | None = SplitOpt, seed: int | None = SeedOpt, device: str | None = DeviceOpt,
              recipe: Recipe | None = RecipeOpt, workers: int | None = WorkersOpt,
              precision: Precision | None = typer.Option(
                  None, "--precision", help="auto: bf16 > fp16 on a GPU, fp32 on CPU.", show_default=str(D.precision)),
              threads: int | None = typer.Option(None, "--threads", min=1,
                                                 help="Torch CPU threads.", show_default="every core"),
              channels_last: Switch | None = typer.Option(
                  None, "--channels-last", help="Train in the channels_last layout (auto: CUDA and CPU).",
                  show_default=D.channels_last),
              config: Path | None = ConfigOpt,
              log: LogTo | None = typer.Option(None, "--log", help="Also log losses and metrics for TensorBoard "
                                                                  "(RUN/tb/; needs pip install tensorboard).",
                                               show_default=D.log),
              out: Path | None = typer.Option(None, "--out", "-o", help="Run folder; `latest` is updated only "
                                                                         "under exports/.",
                                              show_default="exports/<date>-<arch>"),
              cache: bool | None = typer.Option(
                  None, "--cache/--no-cache", help="Reuse cached image checks and probe features (`petclf cache "
                                                   "info`); --no-cache recomputes them all and writes none.",
                  show_default="cache"),
              resume: Path | None = typer.Option(
                  None, "--resume", help="Continue the run in this folder (only --device, --workers and --threads "
                                         "may change).")) -> None:
    """Fine-tune a pretrained timm model: lr_find, fit_one_cycle (frozen, then unfrozen), export the run folder."""
    from petclf.progress import stage

    cfg = _train_config(config, data=data, layout=layout, labels=labels, groups=groups, arch=arch, weights=weights,
                        pretrained=pretrained, epochs=epochs,
                        freeze_epochs=freeze_epochs, lr=lr, bs=bs, size=size, presize=presize, split=split,
                        seed=seed, device=device, recipe=recipe, workers=workers, precision=precision,
                        threads=threads, channels_last=channels_last, log=log, out=out, resume=resume,
                        cache=cache)
    _check_data(cfg.data)
    with stage("loading torch and fastai"):  # seconds on a cold start: the user sees the run begin at once
        from petclf.train import train, train_summary

    typer.echo(train_summary(train(cfg), petclf_command()))


@app.command("lr-find")
@guarded
def lr_find_cmd(data: Path | None = DataOpt, layout: Layout | None = LayoutOpt, labels: Path | None = LabelsOpt,
                arch: str | None = ArchOpt, weights: Path | None = WeightsOpt,
                pretrained: bool | None = PretrainedOpt, bs: int | None = BsOpt, size: int | None = SizeOpt,
                presize: int | None = PresizeOpt, split: str | None = SplitOpt,
                seed: int | None = SeedOpt, device: str | None = DeviceOpt, recipe: Recipe | None = RecipeOpt,
                workers: int | None = WorkersOpt, config: Path | None = ConfigOpt,
                out: Path | None = typer.Option(None, "--out", "-o", help="Folder for lr_find.png.",
                                                show_default="exports")) -> None:
    """Run fastai's lr_find on the training setup, save the plot and print the suggested learning rate."""
    cfg = _train_config(config, data=data, layout=layout, labels=labels, arch=arch, weights=weights,
                        pretrained=pretrained, bs=bs, size=size,
                        presize=presize, split=split, seed=seed, device=device, recipe=recipe, workers=workers)
    _check_data(cfg.data)
    from petclf.train import run_lr_find

    found, png = run_lr_find(cfg, out)
    typer.echo(f"suggested lr {found.suggestion:.2e}{' (fallback)' if found.fallback else ''}; plot: {png}")


# ---------------------------------------------------------------------------------------------------- using a model


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
            out: Path | None = typer.Option(None, "--out", "-o", help="Write the results here instead of stdout."),
            backend: Backend = BackendOpt,
            onnx: bool = typer.Option(False, "--onnx", help="Same as --backend onnx."),
            unsure_below: float | None = UnsureOpt) -> None:
    """Predict breeds for images, in the order given: a species verdict (cat, dog or not a pet) and a breed verdict
    per image. Unreadable images get an error row; exit code 1 if any failed."""
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
    # file names that are not UTF-8 come out as their own bytes, on stdout as in --out (never UnicodeEncodeError)
    data = format_rows(rows, fmt, topk, predictor.display, predictor.noun).encode("utf-8", "surrogateescape")
    if out is None:
        with stream_errors("standard output"):
            typer.echo(data, nl=False)
    else:
        write_output(out, data)
    failed = sum(not r.ok for r in rows)
    if out is not None or failed:
        typer.echo(f"{len(rows) - failed} predicted, {failed} failed" + (f"; results in {out}" if out else ""),
                   err=True)
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
           out: Path | None = typer.Option(None, "--out", "-o", help="Folder for report.html, report.json and "
                                                                      "figures/.", show_default="MODEL/report"),
           bs: int = typer.Option(REPORT_BS, "--bs", min=1, help="Images per forward pass."),
           min_val: int = typer.Option(REPORT_MIN_VAL, "--min-val", min=1,
                                       help="Smallest count listed as a confused pair."),
           top_k: int = typer.Option(REPORT_TOP_LOSSES, "--top-losses", min=1,
                                     help="Top-loss images shown with Grad-CAM."),
           device: str | None = DeviceOpt,
           labels: Path | None = typer.Option(None, "--labels", help="CSV of file,label for --data (csv layout).",
                                              show_default="the one the run recorded")) -> None:
    """Write the interpretation report: one self-contained HTML page, plus JSON and PNG figures."""
    manifest = _check_model(model)
    from petclf.report import write_report

    paths = write_report(model, data=data, split=split, out=out, bs=bs, min_val=min_val, top_k=top_k,
                         device=device, progress=True, labels=labels, manifest=manifest)
    typer.echo(f"report: {paths['html']}")


@app.command("serve")
@guarded
def serve(model: Path = ModelOpt,
          host: str = typer.Option(SERVE_HOST, help="Interface to listen on (0.0.0.0 exposes it to the network)."),
          port: int = typer.Option(SERVE_PORT, help="Port to listen on (1-65535)."),
          share: bool = typer.Option(False, "--share", help="Also publish a temporary public gradio.live link."),
          auth: str | None = typer.Option(None, "--auth", metavar="USER:PASS", envvar="PETCLF_AUTH",
                                          help="Require this login (also read from PETCLF_AUTH, which keeps the "
                                               "password out of the process list)."),
          backend: Backend = BackendOpt,
          onnx: bool = typer.Option(False, "--onnx", help="Same as --backend onnx."),
          title: str | None = typer.Option(None, "--title", help="The page's heading.",
                                           show_default="from the model: 'Which breed is this pet?' for Pets, "
                                                        "'Which class is this?' otherwise"),
          unsure_below: float | None = UnsureOpt) -> None:
    """Serve the Gradio demo: upload a photo, see the class (Pets: breed, cat or dog), and Grad-CAM (always run by
    torch)."""
    from petclf.address import check_address, parse_auth

    if auth is None and os.environ.get("PETCLF_AUTH") == "":
        auth = ""  # click skips an empty variable: refuse it like --auth '' rather than serve without the login
    login = parse_auth(auth)
    check_address(host, port)  # port, address and model first: one line at once, not after Gradio and torch
    _check_model(model)
    from petclf.app import main as serve_demo

    serve_demo(model, host=host, port=port, share=share, backend=_backend(backend, onnx), auth=login,
               title=title, unsure_below=unsure_below)


@app.command("export")
@guarded
def export(model: Path = ModelOpt,
           onnx: bool = typer.Option(False, "--onnx", help="Write model.onnx beside the bundle, checked against "
                                                           "torch.")) -> None:
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
             epochs: int = typer.Option(demo_defaults.EPOCHS, "--epochs", "-e", help="Epochs after unfreezing."),
             layout: Layout = typer.Option(Layout.pets, "--layout", help="The synthetic data's layout: pets, "
                                                                         "folders or csv.")) -> None:
    """The whole pipeline offline on CPU in a few minutes: synthetic data, a small model, train, export, report."""
    from petclf.progress import stage

    with stage("loading torch and fastai"):
        import petclf.train  # noqa: F401 - the slow imports (torch, fastai, timm), under the bar
        from petclf.demo import run_demo

    if layout == Layout.auto:
        fail("--layout for the demo is pets, folders or csv")
    run_demo(out, epochs=epochs, layout=layout.value)
