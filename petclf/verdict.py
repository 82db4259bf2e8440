"""Three answers for every photo, as data and in words, the same on every surface (the demo, its API, `petclf
predict`, the report): one of the model's classes (sure, or the likely two or three), a cat or a dog of a
breed it does not know, or not a cat or a dog.

    from petclf.verdict import make_verdict
    v = make_verdict(probs, group_probs, display, groups, "species", open_set={"pet": True, "known": False,
                     "species": "dog", "species_prob": 0.97})
    v.answer              # 'known' | 'other' (a cat or dog of another breed) | 'not_a_pet' | 'none' (see ANSWERS)
    v.species_text        # 'Dog, 97 %'            | 'Not a cat or a dog'
    v.breed_text          # 'Russian Blue, 83 %'   | 'Russian Blue 40 % or Egyptian Mau 28 %' (unsure: the likely ones)
                          # | 'Not one of the 37 breeds this model knows; closest: Beagle'
"Unsure which breed", "a breed it does not know" and "not a pet" are different answers: an unsure breed lists
the likely breeds (of the species the model is sure of); another breed names the species and never a sure
breed; only the open-set signals (`petclf.openset`: the backbone's ImageNet head) say a photo is not a cat or
a dog. A bundle without them says only what its not-a-pet detector can (`petclf.notapet`: "none of the N
classes", which cannot tell another breed from no pet), and a model without groups (a user's own classes) gets
no species answer: nothing is shown rather than something made up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from petclf.config import LIKELY_MAX, LIKELY_MIN_PROB, UNSURE_BELOW
from petclf.labels import plural

# The answer kinds (`Verdict.answer`, a stable machine key on every surface):
ANSWERS = {"known": "one of the model's classes (sure, or the likely two or three)",
           "other": "a cat or a dog (a member of one of the model's groups) of a class the model does not know",
           "not_a_pet": "not a cat or a dog (none of the model's groups)",
           "none": "none of the model's classes: a bundle without open-set signals cannot tell which of the two"}


@dataclass
class Verdict:
    """Both answers for one image, as data and as words."""

    not_a_pet: bool | None  # True: the detector says this is none of the model's kind; None: no detector
    not_a_pet_score: float | None  # the detector's score (higher: more like the training photos)
    species: str | None  # the group (Pets: cat | dog) the model is sure of; None without groups or when unsure
    species_prob: float | None  # the most likely group's probability
    breed_sure: bool  # the top breed is at least `unsure_below` likely
    likely: list[tuple[str, float]] = field(default_factory=list)  # (class id, prob): the answer's breeds
    species_text: str = ""  # '' for a model without groups and without a detector
    breed_text: str = ""
    answer: str = "known"  # one of ANSWERS

    def to_dict(self, display: dict[str, str]) -> dict[str, Any]:
        """Plain data: ids as machine keys, display names beside them."""
        d = asdict(self)
        d["likely"] = [{"breed_id": b, "breed": display.get(b, b), "prob": round(p, 6)} for b, p in self.likely]
        for k in ("species_prob", "not_a_pet_score"):
            d[k] = None if d[k] is None else round(d[k], 6)
        return d


def percent(p: float) -> str:
    """0.834 -> '83 %'."""
    return f"{p:.0%}".replace("%", " %")


def sure_group(group_probs: dict[str, float], unsure_below: float) -> tuple[str | None, float | None]:
    """(the most likely group if at least `unsure_below` likely, else None; its probability)."""
    if not group_probs:
        return None, None
    g = max(group_probs, key=group_probs.get)
    return (g if group_probs[g] >= unsure_below else None), group_probs[g]


def likely_classes(probs: dict[str, float], groups: dict[str, str], species: str | None) -> list[tuple[str, float]]:
    """The two or three likely classes, most likely first; only those of `species` when the model is sure of
    it (so the list never contradicts the species answer); none that rounds to 0 % but the first."""
    ranked = [(c, p) for c, p in probs.items() if species is None or groups.get(c) == species]
    ranked.sort(key=lambda cp: -cp[1])
    keep = ranked[:2] + [cp for cp in ranked[2:LIKELY_MAX] if cp[1] >= LIKELY_MIN_PROB]
    return keep[:1] + [cp for cp in keep[1:] if percent(cp[1]) != percent(0.0)]  # never a "0 %" likely class


def none_of(n: int, noun: str) -> str:
    """'none of the 37 breeds this model knows' (lower case: the caller places it)."""
    return f"none of the {n} {plural(noun)} this model knows"


def species_words(species: str | None, p: float | None, group_probs: dict[str, float], group_name: str | None,
                  answer: str, n: int, noun: str) -> str:
    """The species answer in words ('' when there is nothing honest to say)."""
    if answer == "not_a_pet":
        return "Not a " + " or a ".join(sorted(group_probs))
    if answer == "none":
        return none_of(n, noun).capitalize()
    if not group_probs:
        return ""
    if species is not None:
        return f"{species.capitalize()}, {percent(p)}"
    ranked = sorted(group_probs.items(), key=lambda gp: -gp[1])
    return f"Not sure which {group_name or 'group'}: " + " or ".join(f"{g} {percent(q)}" for g, q in ranked[:2])


def breed_words(likely: list[tuple[str, float]], sure: bool, display: dict[str, str], answer: str, n: int,
                noun: str) -> str:
    """The breed answer in words."""
    if answer in ("not_a_pet", "none"):
        return f"No {noun}: this does not look like the photos the model was trained on"
    if answer == "other":  # no percent: a closed-set head is often 100 % sure of a breed it was never shown
        b, _ = likely[0]
        return f"{none_of(n, noun).capitalize()}; closest: {display.get(b, b)}"
    if sure:
        b, p = likely[0]
        return f"{display.get(b, b)}, {percent(p)}"
    return " or ".join(f"{display.get(b, b)} {percent(p)}" for b, p in likely)


def make_verdict(probs: dict[str, float], group_probs: dict[str, float], display: dict[str, str],
                 groups: dict[str, str], group_name: str | None = None, not_a_pet: bool | None = None,
                 score: float | None = None, unsure_below: float = UNSURE_BELOW,
                 open_set: dict[str, Any] | None = None, noun: str = "breed",
                 species_below: float | None = None) -> Verdict:
    """The answers for one image from its class probabilities, group probabilities, the not-a-pet detector's
    result (`not_a_pet`, `score`) and the open-set signals (`open_set`: {pet, known, species, species_prob}
    and optionally agrees, see `petclf.openset`), which decide where a bundle has them. A group is sure from
    `species_below` (default: the breed's `unsure_below`)."""
    answer = open_set_answer(open_set) if open_set is not None else "none" if not_a_pet else "known"
    if answer == "other":  # the species from the ImageNet head, the closest class of it (never a sure one)
        species, species_prob = open_set["species"], float(open_set["species_prob"])
        likely = likely_classes(probs, groups, species)[:1]
    else:
        species, species_prob = sure_group(group_probs, unsure_below if species_below is None else species_below)
    top, top_p = max(probs.items(), key=lambda cp: cp[1])
    # a top breed of the other species is no sure answer: the two answers must agree; nor one the backbone's
    # own ImageNet head disagrees with (`open_set["agrees"]`, petclf.openset.SURE_RULE; absent: no such
    # signal)
    sure = (answer == "known" and top_p >= unsure_below and (species is None or groups.get(top) == species)
            and bool((open_set or {}).get("agrees", True)))
    if answer != "other":
        likely = [(top, top_p)] if sure else likely_classes(probs, groups, species)
    pet = answer in ("known", "other")
    n = len(probs)
    return Verdict(not pet if (open_set is not None or not_a_pet is not None) else None, score,
                   species if pet else None, species_prob, sure, likely,
                   species_words(species, species_prob, group_probs, group_name, answer, n, noun),
                   breed_words(likely, sure, display, answer, n, noun), answer)


def open_set_answer(signals: dict[str, Any]) -> str:
    """'not_a_pet', 'other' or 'known' from one photo's open-set signals."""
    return "not_a_pet" if not signals["pet"] else "known" if signals["known"] else "other"


def held_out_answers(probs: np.ndarray, targs: np.ndarray, groups: list[str] | None,
                     unsure_below: float) -> dict[str, Any]:
    """How photos the model did not train on were answered by the breed rule: sure and right, sure and wrong,
    unsure with the right one among the likely ones, unsure without it; and the group right (None without
    groups). The report's "Answers" rows; the open-set answers need each photo's features, which the report's
    pass does not keep."""
    n = max(len(targs), 1)
    top, p = probs.argmax(1), probs.max(1)
    sure = p >= unsure_below
    ranked = np.argsort(-probs, axis=1)[:, :LIKELY_MAX]
    among = (ranked == targs[:, None]).any(1)
    g = np.asarray(groups) if groups else None
    return {"unsure_below": unsure_below, "n": int(len(targs)),
            "sure_right": float((sure & (top == targs)).sum() / n),
            "sure_wrong": float((sure & (top != targs)).sum() / n),
            "unsure_listed": float((~sure & among).sum() / n), "unsure_missed": float((~sure & ~among).sum() / n),
            "group_right": float((g[top] == g[targs]).mean()) if g is not None and len(targs) else None}
