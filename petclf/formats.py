"""One image's result (`Prediction`) and how `petclf predict` writes results: an aligned table, CSV or JSON.

    from petclf.formats import format_rows
    print(format_rows(rows, "json", k=3, names=p.display))   # rows: Predictor.predict_paths(...)

The keys say `class` and `group` for every model (a Pets model's classes are breeds, its groups
species), so the same reader works for a user's own classes. `FORMAT` versions them: every JSON object
carries it as `format`; format 1 (unversioned) said `breed_id`, `breed`, `species`, `breed_sure`
(README, `petclf predict`, maps each old key to its new one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from petclf.config import OutputFormat
from petclf.errors import PetclfError
from petclf.verdict import Verdict

FORMAT = 2  # the version of the keys `row_dict` writes (1, unversioned: breed_id, breed, species, breed_sure)


@dataclass
class Prediction:
    """One image's result: probabilities over all classes (most likely first) and over their groups
    (Pets: cat or dog; empty for a model without groups), or the error that stopped it."""

    file: str
    probs: dict[str, float] = field(default_factory=dict)
    group_probs: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    verdict: Verdict | None = None  # both answers (species or not a pet; breed), None for an error row

    @property
    def ok(self) -> bool:
        """True when the image was predicted."""
        return self.error is None

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most likely classes with their probabilities."""
        return list(self.probs.items())[:k]

    @property
    def group(self) -> str | None:
        """The group (Pets: `cat` or `dog`) with the most probability summed over its classes; None without
        groups."""
        return max(self.group_probs, key=self.group_probs.get) if self.group_probs else None


Names = dict[str, str] | None  # {class id: display name}; None: labels.display_name


def _name(names: Names, c: str) -> str:
    from petclf.labels import display_name

    return (names or {}).get(c) or display_name(c)


def row_dict(row: Prediction, k: int = 5, names: Names = None) -> dict[str, Any]:
    """A result as plain data (format `FORMAT`): the class id (`class_id`, the machine key) and display
    name (`class`) of each of the top k, the group and not-a-pet answers (each only where the model has
    them), the answer's kind (`answer`: known, other, not_a_pet or none: `petclf.verdict.ANSWERS`), both
    verdicts in words; `error` (null unless the row failed: JSON readers find every key in every object)."""
    if not row.ok:
        return {"format": FORMAT, "file": row.file, "top": [], "error": row.error}
    v = row.verdict
    (c, p), top = row.top(1)[0], row.top(k)
    d: dict[str, Any] = {"format": FORMAT, "file": row.file, "class_id": c, "class": _name(names, c),
                         "prob": round(p, 6),
                         "top": [{"class_id": b, "class": _name(names, b), "prob": round(q, 6)}
                                 for b, q in top]}
    if row.group_probs:  # a cat or dog of another breed: the species the open-set signals name
        g, q = (v.species, v.species_prob) if v is not None and v.answer == "other" else \
            (row.group, row.group_probs[row.group])
        d |= {"group": g, "group_prob": round(q, 6)}
    if v is not None and v.not_a_pet is not None:
        d |= {"not_a_pet": v.not_a_pet,
              "not_a_pet_score": None if v.not_a_pet_score is None else round(v.not_a_pet_score, 6)}
    if v is not None:
        d |= {"answer": v.answer, "verdict": {"group": v.species_text, "class": v.breed_text,
                                              "class_sure": v.breed_sure, "likely": [b for b, _ in v.likely]}}
    return d | {"error": None}


def to_json(rows: Sequence[Prediction], k: int = 5, names: Names = None) -> str:
    """Results as a JSON list, one object per image, in input order."""
    import json

    return json.dumps([row_dict(r, k, names) for r in rows], indent=1) + "\n"


def _has(rows: Sequence[Prediction], what: str) -> bool:
    """Whether any row has group answers (`group`), not-a-pet answers (`not_a_pet`) or an error (`error`)."""
    if what == "error":
        return any(not r.ok for r in rows)
    if what == "group":
        return any(r.group_probs for r in rows)
    return any(r.verdict is not None and r.verdict.not_a_pet is not None for r in rows)


def csv_header(rows: Sequence[Prediction], k: int) -> list[str]:
    """The CSV columns these rows need: group, not-a-pet and error columns only where there is something
    to say."""
    head = ["file", *[f"{c}_{i}" for i in range(1, k + 1) for c in ("class_id", "class", "prob")]]
    head += ["group", "group_prob"] if _has(rows, "group") else []
    head += ["not_a_pet", "not_a_pet_score"] if _has(rows, "not_a_pet") else []
    return head + ["verdict_group", "verdict_class", "answer"] + (["error"] if _has(rows, "error") else [])


def csv_cells(d: dict[str, Any]) -> dict[str, str]:
    """One `row_dict` as CSV cells (numbers written with 6 decimals)."""
    out = {"file": d["file"], "error": d["error"] or ""}  # the error column exists only when a row failed
    for i, t in enumerate(d["top"], 1):
        out |= {f"class_id_{i}": t["class_id"], f"class_{i}": t["class"], f"prob_{i}": f"{t['prob']:.6f}"}
    if "group" in d:
        out |= {"group": d["group"], "group_prob": f"{d['group_prob']:.6f}"}
    if "not_a_pet" in d:
        score = d["not_a_pet_score"]
        out |= {"not_a_pet": str(d["not_a_pet"]).lower(),
                "not_a_pet_score": "" if score is None else f"{score:.6f}"}
    if "verdict" in d:
        said = d["verdict"]
        out |= {"verdict_group": said["group"], "verdict_class": said["class"], "answer": d["answer"]}
    return out


def to_csv(rows: Sequence[Prediction], k: int = 5, names: Names = None) -> str:
    """Results as CSV, in input order: file, class_id_1, class_1, prob_1, ..., [group, group_prob],
    [not_a_pet, not_a_pet_score], verdict_group, verdict_class, answer, [error]."""
    import csv
    import io

    from petclf.text import as_cell

    head = csv_header(rows, k)
    numbers = {c for c in head if c.startswith("prob_") or c.endswith(("_prob", "_score"))}  # ours: no text
    buf = io.StringIO()
    w = csv.DictWriter(buf, head, lineterminator="\n", restval="")
    w.writeheader()
    for r in rows:
        out = csv_cells(row_dict(r, k, names))
        w.writerow({c: v if c in numbers else as_cell(v) for c, v in out.items() if c in head})
    return buf.getvalue()


def verdict_text(row: Prediction) -> str:
    """The table's verdict: both answers in words, the species one first ('' for an error row)."""
    v = row.verdict
    if v is None:
        return ""
    return v.species_text if v.not_a_pet else "; ".join(t for t in (v.species_text, v.breed_text) if t)


def to_table(rows: Sequence[Prediction], k: int = 5, names: Names = None, noun: str = "breed",
             width: int = 160) -> str:
    """Results as an aligned text table (rich), in input order; an error column only when a row failed."""
    import io

    from rich.console import Console
    from rich.table import Table

    from petclf.text import as_terminal

    errors = _has(rows, "error")
    table = Table(box=None, pad_edge=False)
    heading = f"top {noun}es" if noun.endswith("s") else f"top {noun}s"  # breeds, classes
    for name in ("file", "verdict", heading, *(["error"] if errors else [])):
        table.add_column(name, overflow="fold")  # a long path is folded over lines, never cut to "..."
    for r in rows:
        top = ", ".join(f"{_name(names, b)} {p:.1%}" for b, p in r.top(k))
        cells = (r.file, verdict_text(r), top, *([r.error or ""] if errors else []))
        table.add_row(*map(as_terminal, cells))  # names are text: never rich markup, never raw control codes
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, highlight=False).print(table)
    return buf.getvalue()


WRITERS = {OutputFormat.table: to_table, OutputFormat.csv: to_csv, OutputFormat.json: to_json}


def format_rows(rows: Sequence[Prediction], fmt: str | OutputFormat = OutputFormat.table, k: int = 5,
                names: Names = None, noun: str = "breed") -> str:
    """Results in one of the `OutputFormat`s; `names`: the predictor's display names (`Predictor.display`);
    `noun`: what the table calls a class (`Predictor.noun`)."""
    try:
        fmt = OutputFormat(fmt)
    except ValueError:
        choices = ", ".join(f.value for f in OutputFormat)
        raise PetclfError(f"unknown format {fmt!r} (one of {choices})") from None
    return to_table(rows, k, names, noun) if fmt is OutputFormat.table else WRITERS[fmt](rows, k, names)
