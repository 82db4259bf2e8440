"""What the `petclf` commands share: one-line errors and exit codes; flags made from TrainConfig's fields.

    @app.command("train")
    @guarded                                   # petclf's errors: one line, exit 2; other failures: exit 1
    @with_settings(["data", "epochs"])         # --data/-d and --epochs/-e, from the fields' metadata
    def train_cmd(flags: dict, config: Path | None = None): ...

Kept apart from cli.py so that the command groups in other cli_* modules use them without an import circle.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from petclf.config import ConfigError, meta, resumable, setting_type, settings
from petclf.errors import PetclfError, as_typed

HELP = {"help_option_names": ["-h", "--help"]}


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


def plain(v: Any) -> Any:
    """Enums and paths as the plain strings the settings hold."""
    return v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v


def _parser(check: Callable[[Any], Any]) -> Callable[[str | None], Any]:
    """A setting's own check as a flag parser: a usage error (exit 2) for a value it refuses."""

    def parse(value: str | None) -> Any:
        try:
            return None if value is None else check(value)
        except ConfigError as e:
            raise typer.BadParameter(str(e)) from None

    return parse


def option_names(name: str) -> list[str]:
    """The flags of a setting: `--freeze-epochs`, `--epochs -e`, `--cache/--no-cache` for a switch."""
    flag = "--" + name.replace("_", "-")
    if setting_type(name) is bool:
        return [f"{flag}/--no-{flag[2:]}"]
    return [flag] + ([meta(name)["short"]] if meta(name)["short"] else [])


def option_help(name: str) -> str:
    """A setting's --help text: its doc, its range, and for --resume what may change."""
    doc, bounds = meta(name)["doc"], meta(name)["bounds"]
    if bounds is not None:
        doc += f" Range {bounds}."
    if name == "resume":
        doc += f" Only {', '.join(option_names(k)[0] for k in resumable())} may change."
    return doc


def shown_default(name: str) -> str | None:
    """The default --help shows for a setting: its own words, else the value; None when there is none."""
    f = next(f for f in settings() if f.name == name)
    if f.metadata["shown"] is not None:
        return f.metadata["shown"]
    if isinstance(f.default, bool):
        return name if f.default else f"no-{name}"
    return None if f.default is None else str(f.default)


def setting_option(name: str, panel: bool = True) -> Any:
    """The flag of the TrainConfig field `name` (typer's Option). Its default is None, so that defaults <
    --config FILE < flags holds (petclf.config); --help shows the field's own default."""
    m, shown = meta(name), shown_default(name)
    extra = {"parser": _parser(m["check"])} if m["check"] else {}
    return typer.Option(None, *option_names(name), help=option_help(name), metavar=m["metavar"],
                        show_default=shown if shown is not None else False,
                        rich_help_panel=m["panel"] if panel else None, **extra)


def _parameter(name: str) -> inspect.Parameter:
    """A keyword parameter typer reads as the flag of the setting `name`, typed by its choices or its
    field."""
    m = meta(name)
    kind = m["choices"] or (Path if m["path"] else setting_type(name))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=setting_option(name),
                             annotation=kind | None)


def with_settings(names: Iterable[str]):
    """Decorate `fn(flags, **rest)` into a command that also takes a flag per setting in `names`; `fn` gets
    them as `flags` (a dict of plain values, None when not given) and its own parameters as before."""
    names = set(names)
    chosen = [f for f in settings() if f.name in names]

    def decorate(fn):
        own = [p.replace(kind=p.KEYWORD_ONLY) for p in inspect.signature(fn).parameters.values()
               if p.name != "flags"]

        @functools.wraps(fn)
        def command(**kwargs):
            flags = {f.name: plain(kwargs.pop(f.name)) for f in chosen}
            return fn(flags, **kwargs)

        command.__signature__ = inspect.Signature([*(_parameter(f.name) for f in chosen), *own])
        return command

    return decorate
