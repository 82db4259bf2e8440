"""The two answers: species (or not a pet) and breed, for Pets and for a model of a user's own classes."""

from __future__ import annotations

from petclf.labels import display_name
from petclf.verdict import make_verdict, percent


def test_a_model_without_groups_gets_no_species_answer():
    probs = {"tabby": 0.45, "tortoiseshell": 0.35, "ginger": 0.2}
    v = make_verdict(probs, {}, {c: c for c in probs}, {})
    assert v.species is None and v.species_text == "" and v.not_a_pet is None and v.not_a_pet_score is None
    assert v.breed_text == "tabby 45 % or tortoiseshell 35 % or ginger 20 %" and not v.breed_sure
    v = make_verdict(probs, {}, {c: c for c in probs}, {}, not_a_pet=True, score=0.1, noun="class")
    assert v.species_text == "None of the 3 classes this model knows" and v.likely and not v.breed_sure
    assert v.answer == "none" and v.breed_text.startswith("No class:")


def test_a_top_breed_of_the_other_species_is_not_a_sure_answer():
    groups = {"Bengal": "cat", "Birman": "cat", "beagle": "dog", "pug": "dog"}
    probs = {"beagle": 0.35, "Bengal": 0.33, "Birman": 0.31, "pug": 0.01}
    v = make_verdict(probs, {"cat": 0.64, "dog": 0.36}, {b: display_name(b) for b in groups}, groups, "species",
                     unsure_below=0.3)  # beagle clears 0.3, but the model is sure this is a cat
    assert v.species == "cat" and not v.breed_sure and [b for b, _ in v.likely] == ["Bengal", "Birman"]
    assert v.species_text == "Cat, 64 %" and v.breed_text == "Bengal 33 % or Birman 31 %"


def test_an_unsure_species_says_so_and_lists_both():
    groups = {"Bengal": "cat", "beagle": "dog"}
    v = make_verdict({"Bengal": 0.52, "beagle": 0.48}, {"cat": 0.52, "dog": 0.48}, {b: display_name(b) for b in groups},
                     groups, "species", unsure_below=0.6)
    assert v.species is None and v.species_text == "Not sure which species: cat 52 % or dog 48 %"
    assert v.breed_text == "Bengal 52 % or Beagle 48 %" and percent(0.834) == "83 %"
