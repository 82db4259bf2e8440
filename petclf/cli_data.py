"""`petclf data ...` and `petclf cache ...`: inspect and make datasets, show or clear the feature cache.

    petclf data check --data data/oxford-iiit-pet
    petclf data synth data/synth --classes 4 --per-class 20 --bad
    petclf cache info

Argument parsing only, like cli.py (which adds these groups to `petclf`); the work is done in the package.
"""

from __future__ import annotations

from pathlib import Path

import typer

from petclf.cli_shell import HELP, fail, guarded, with_settings
from petclf.config import SYNTH_SET, Layout, resolve_config

data_app = typer.Typer(help="Inspect and generate datasets.", no_args_is_help=True, context_settings=HELP)
cache_app = typer.Typer(help="Show or clear the feature cache (what `petclf train` reuses between runs).",
                        no_args_is_help=True, context_settings=HELP)
CLASSES, PER_CLASS, SIZE, SEED = SYNTH_SET


@data_app.command("check")
@guarded
@with_settings(["data", "layout", "labels", "groups", "split", "valid_pct", "seed", "cache"])
def data_check(flags: dict,
               report: Path | None = typer.Option(None, help="Folder to write data_report.json into.")
               ) -> None:
    """Say which layout --data has and why, verify every image, count classes and split sizes, list bad files.
    Exits 2 if training could not go on."""
    from petclf.data import load_data
    from petclf.layouts import read_groups
    from petclf.progress import bar

    cfg = resolve_config(**flags)
    with bar("verifying images") as progress:
        pets = load_data(cfg.data, split=cfg.split, valid_pct=cfg.valid_pct, seed=cfg.seed,
                         use_cache=cfg.cache, progress=progress, layout=cfg.layout, labels=cfg.labels)
    group_name, named = read_groups(cfg.groups, pets.vocab) if cfg.groups else ("species", None)
    typer.echo(pets.report.summary())
    if (note := _probe_note(pets, cfg.small_data)) is not None:
        typer.echo(note)
    _print_class_table(pets.report.class_counts, group_name, named)
    if report is not None:
        typer.echo(f"data report: {pets.report.save(report)}")


def _probe_note(pets, small_data: int) -> str | None:
    """What `data check` adds where `auto` would train the probe: the split it printed is not the one used."""
    from collections import Counter
    from statistics import median

    per_class = Counter(pets.labels[i] for i in pets.train_idx)
    if not per_class or median(per_class.values()) >= small_data:
        return None
    return (f"note: under {small_data} training images per class, `petclf train` (recipe auto) trains the "
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
               split_dirs: bool = typer.Option(False, "--split-dirs",
                                               help="folders: DIR/train|valid/<class>/."),
               classes: int = typer.Option(CLASSES, help="Number of classes (2-37 breeds; 2-8 own names for "
                                                         "folders and csv)."),
               per_class: int = typer.Option(PER_CLASS, help="Images per breed."),
               size: int = typer.Option(SIZE, help="Image side in pixels."),
               seed: int = typer.Option(SEED, help="Random seed."),
               bad: bool = typer.Option(False, "--bad",
                                        help="Also plant the known bad files of real Pets.")) -> None:
    """Write a synthetic dataset in any layout that a small CNN learns in a minute on CPU."""
    from petclf.synth import synth_data

    if layout == Layout.auto:
        fail("--layout for synth is pets, folders or csv")
    planted = synth_data(out, layout.value, n_classes=classes, per_class=per_class, size=size, seed=seed,
                         bad=bad, split_dirs=split_dirs)
    typer.echo(f"wrote {classes * per_class} images of {classes} classes to {out} ({layout.value} layout)")
    for name, verdict in planted.items():
        typer.echo(f"  planted {name} ({verdict})")


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
