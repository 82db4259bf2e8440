"""Two questions, two answers: is this a pet (and which species), and which breed. The same words on every surface
(the demo, its API, `petclf predict`).

    from petclf.verdict import make_verdict
    v = make_verdict(probs, group_probs, display, groups, not_a_pet=False, score=0.71)
    v.species_text        # 'Cat, 96 %'            | 'Not a cat or a dog' (only when the not-a-pet detector says so)
    v.breed_text          # 'Russian Blue, 83 %'   | 'Russian Blue 40 % or Egyptian Mau 28 %' (unsure: the likely ones)

"Unsure which breed" and "not a pet" are different answers: an unsure breed lists the two or three likely breeds
(of the species the model is sure of) and never says the photo is not a cat or a dog; only the not-a-pet detector
says that. A model without groups (a user's own classes) gets no species answer, and without a detector no
not-a-pet answer: nothing is shown rather than something made up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from petclf.config import LIKELY_MAX, LIKELY_MIN_PROB, UNSURE_BELOW


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
    """The two or three likely classes, most likely first; only those of `species` when the model is sure of it
    (so the list never contradicts the species answer); none that rounds to 0 % but the first."""
    ranked = [(c, p) for c, p in probs.items() if species is None or groups.get(c) == species]
    ranked.sort(key=lambda cp: -cp[1])
    keep = ranked[:2] + [cp for cp in ranked[2:LIKELY_MAX] if cp[1] >= LIKELY_MIN_PROB]
    return keep[:1] + [cp for cp in keep[1:] if percent(cp[1]) != percent(0.0)]  # never a "0 %" likely class


def species_words(species: str | None, p: float | None, group_probs: dict[str, float], group_name: str | None,
                  not_a_pet: bool | None) -> str:
    """The species answer in words ('' when there is nothing honest to say)."""
    if not_a_pet:
        kinds = " or a ".join(sorted(group_probs)) if group_probs else ""
        return f"Not a {kinds}" if kinds else "Not like any class this model knows"
    if not group_probs:
        return ""
    if species is not None:
        return f"{species.capitalize()}, {percent(p)}"
    ranked = sorted(group_probs.items(), key=lambda gp: -gp[1])
    return f"Not sure which {group_name or 'group'}: " + " or ".join(f"{g} {percent(q)}" for g, q in ranked[:2])


def breed_words(likely: list[tuple[str, float]], sure: bool, display: dict[str, str], not_a_pet: bool | None) -> str:
    """The breed answer in words."""
    if not_a_pet:
        return "No breed: this does not look like the photos the model was trained on"
    if sure:
        b, p = likely[0]
        return f"{display.get(b, b)}, {percent(p)}"
    return " or ".join(f"{display.get(b, b)} {percent(p)}" for b, p in likely)


def make_verdict(probs: dict[str, float], group_probs: dict[str, float], display: dict[str, str],
                 groups: dict[str, str], group_name: str | None = None, not_a_pet: bool | None = None,
                 score: float | None = None, unsure_below: float = UNSURE_BELOW) -> Verdict:
    """Both answers for one image from its class probabilities, group probabilities and the detector's result."""
    species, species_prob = sure_group(group_probs, unsure_below)
    top, top_p = max(probs.items(), key=lambda cp: cp[1])
    # a top breed of the other species is no sure answer: the two answers must agree
    sure = top_p >= unsure_below and (species is None or groups.get(top) == species)
    likely = [(top, top_p)] if sure else likely_classes(probs, groups, species)
    return Verdict(not_a_pet, score, None if not_a_pet else species, species_prob, sure and not not_a_pet,
                   likely, species_words(species, species_prob, group_probs, group_name, not_a_pet),
                   breed_words(likely, sure, display, not_a_pet))
