"""The report's charts and page, made from its numbers alone (no model, no data): matplotlib figures saved as
PNG bytes, and the one self-contained HTML page they are embedded in (jinja2, `templates/report.html`).

    from petclf.plots import plot_confusion, png, render_html
    png(plot_confusion(report["confusion"]))           # bytes of a PNG, ready to embed or save
    render_html(report, {"confusion_matrix.png": ...})  # the page, every figure a data: URI

"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

from petclf.labels import display_name, plural
from petclf.text import PLAIN_TEXT, shown

NOT_RECORDED = "not recorded"

CAT_COLOR, DOG_COLOR = "#b35900", "#1f4e99"  # label colours: cat breeds orange-brown, dog breeds blue
GROUP_COLORS = ("#1f4e99", "#b35900", "#2e7d32", "#6a1b9a", "#00838f", "#c62828")  # other groups, in turn


def group_colors(groups: list[str] | None) -> dict[str, str]:
    """{group: label colour}: Pets' cat and dog keep theirs, other groups take GROUP_COLORS in turn."""
    fixed = {"cat": CAT_COLOR, "dog": DOG_COLOR}
    names = list(dict.fromkeys(groups or []))
    if set(names) <= set(fixed):
        return {g: fixed[g] for g in names}
    return {g: GROUP_COLORS[k % len(GROUP_COLORS)] for k, g in enumerate(names)}


def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def plot_confusion(conf: dict[str, Any]):
    """Row-normalised confusion matrix (by group: Pets' cats then dogs), percentages in the cells, counts in
    the labels."""
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    rates, counts = np.asarray(conf["row_normalised"]), np.asarray(conf["counts"])
    n = len(conf["classes"])
    side = max(5.0, 0.27 * n + 3.2)
    fig = Figure(figsize=(side, side), dpi=150)
    ax = fig.subplots()
    # sqrt colour scale: rare confusions stay visible
    im = ax.imshow(rates, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    fs = 10 if n > 20 else 11
    names = [shown(display_name(c)) for c in conf["classes"]]  # names are text: no mathtext, no controls
    ax.set_xticks(range(n), names, rotation=90, fontsize=fs, **PLAIN_TEXT)
    rows = [f"{c} ({int(r)})" for c, r in zip(names, counts.sum(1), strict=True)]
    ax.set_yticks(range(n), rows, fontsize=fs, **PLAIN_TEXT)
    groups, colors = conf.get("groups"), group_colors(conf.get("groups"))
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()) if groups else ():
        for lab, g in zip(labels, groups, strict=True):
            lab.set_color(colors[g])
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="#dfe4ea", lw=0.5)  # faint cell borders keep long rows and columns traceable
    ax.tick_params(which="minor", length=0)
    for i, j in zip(*np.nonzero(counts), strict=True):
        v = rates[i, j]
        ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7 if n > 20 else 10,
                color="white" if v > 0.45 else "black")
    for k in range(1, n) if groups else ():
        if groups[k] != groups[k - 1]:  # a line between groups
            for f in (ax.axhline, ax.axvline):
                f(k - 0.5, color="#444", lw=1)
    ax.set_xlabel("predicted", fontsize=11)
    ax.set_ylabel("actual (images in the split)", fontsize=11)
    by = f"; by {conf['group_name']}: " + ", ".join(colors) if groups else ""
    ax.set_title(f"row-normalised confusion matrix, % of each actual class{shown(by)}", fontsize=11,
                 **PLAIN_TEXT)
    cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    cb.set_label("share of the row")
    return fig


def plot_history(history: list[dict[str, Any]]):
    """Training and validation loss, and error rate, per epoch across all phases."""
    from matplotlib.figure import Figure

    x = np.arange(1, len(history) + 1)
    fig = Figure(figsize=(10, 3.4), dpi=110)
    ax_loss, ax_err = fig.subplots(1, 2)
    for key, style in (("train_loss", "-o"), ("valid_loss", "-s")):
        ax_loss.plot(x, [h.get(key, math.nan) for h in history], style, label=key.replace("_", " "), ms=4)
    ax_err.plot(x, [h.get("error_rate", math.nan) for h in history], "-o", color="#c0392b", ms=4)
    phases = [h.get("phase", "") for h in history]
    for ax in (ax_loss, ax_err):
        for k in range(1, len(phases)):
            if phases[k] != phases[k - 1]:
                ax.axvline(k + 0.5, color="#888", ls="--", lw=1)
                ax.text(k + 0.55, 0.98, phases[k], transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_err.set_title("validation error rate")
    return fig


def plot_reliability(cal: dict[str, Any]):
    """Reliability diagrams before and after temperature scaling: accuracy against confidence per bin."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    titles = ("before (T = 1)", f"after temperature scaling (T = {cal['temperature']:.3g})")
    for ax, key, title in zip(fig.subplots(1, 2, sharey=True), ("before", "after"), titles, strict=True):
        bins = cal[f"bins_{key}"]
        width = 1 / len(bins)
        mids = [(b["lo"] + b["hi"]) / 2 for b in bins]
        acc = [b["accuracy"] or 0 for b in bins]
        conf = [b["confidence"] or 0 for b in bins]
        ax.bar(mids, acc, width=width, edgecolor="#1f4e99", color="#7aa6e0", label="accuracy")
        ax.bar(mids, np.subtract(conf, acc), bottom=acc, width=width, color="none", edgecolor="#c0392b",
               hatch="//", lw=0.6, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)",
               title=f"{title}\nECE = {100 * cal[f'ece_{key}']:.2f}%")
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel("accuracy")
    fig.axes[0].legend(loc="upper left")
    return fig


# ---------------------------------------------------------------------------------------------------- the
# page


def data_uri(png: bytes) -> str:
    """PNG bytes as a `data:` URI to embed in HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def is_number(v: Any) -> bool:
    """True for a finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any, digits: int = 3) -> str:
    """A number for the page; anything missing says 'not recorded'."""
    if isinstance(v, str):
        return v
    if not is_number(v):
        return NOT_RECORDED
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"


def _pct(v: Any, digits: int = 1) -> str:
    """A rate as a percentage."""
    return f"{100 * v:.{digits}f}%" if is_number(v) else NOT_RECORDED


def _pct_na(v: Any, digits: int = 1) -> str:
    """A rate as a percentage, or n/a where it is undefined (no image, no prediction)."""
    return "n/a" if v is None else _pct(v, digits)


def _ci(interval: list[float] | None) -> str:
    """A 95 % interval as 'lo-hi %', empty where there is none."""
    return "" if not interval else f"{100 * interval[0]:.0f}-{100 * interval[1]:.0f}%"


def _duration(s: Any) -> str:
    """Seconds as seconds or minutes."""
    if not is_number(s):
        return NOT_RECORDED
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _shown_value(v: Any) -> Any:
    """jinja2 `finalize`: strings `shown` (markup jinja2 made, as by `|join`, stays markup), others as is."""
    from markupsafe import Markup

    if isinstance(v, Markup):
        return Markup(shown(v))  # escaping never makes a control character: this changes only the names' own
    return shown(v) if isinstance(v, str) else v


def render_html(report: dict[str, Any], figures: dict[str, bytes]) -> str:
    """The report as one self-contained HTML page (figures embedded as data URIs, no external resources)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    # every value printed is text: control characters made visible, then HTML-escaped (jinja2's autoescape)
    env = Environment(loader=PackageLoader("petclf", "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True, finalize=_shown_value)
    conf = report["confusion"]
    group_of = dict(zip(conf["classes"], conf.get("groups") or [], strict=False))
    env.filters.update(num=_fmt, pct=_pct, pct_na=_pct_na, ci=_ci, duration=_duration, pretty=display_name,
                       group_css=lambda c: group_of.get(c) if group_of.get(c) in ("cat", "dog") else "")
    uris = {name: data_uri(png) for name, png in figures.items()}
    noun = report["summary"].get("noun", "class")
    return env.get_template("report.html").render(r=report, fig=uris, not_recorded=NOT_RECORDED, noun=noun,
                                                  nouns=plural(noun))
