"""petclf.labels: breeds from Pets file names, cats Capitalized and dogs lowercase."""

from __future__ import annotations

from pathlib import Path

import pytest

from petclf.errors import DataError
from petclf.labels import CAT_BREEDS, DOG_BREEDS, breed_of, display_name, label_from_path, pets_groups, species_of
from petclf.synth import synth_classes


@pytest.mark.parametrize("name,breed,species", [
    ("Abyssinian_100.jpg", "Abyssinian", "cat"),
    ("British_Shorthair_7.jpg", "British_Shorthair", "cat"),
    ("american_pit_bull_terrier_191.jpg", "american_pit_bull_terrier", "dog"),
    ("great_pyrenees_12.jpeg", "great_pyrenees", "dog"),
    ("yorkshire_terrier_2.png", "yorkshire_terrier", "dog"),
])
def test_labels_from_file_names(name, breed, species):
    assert breed_of(name) == breed
    assert label_from_path(Path("x") / name) == breed
    assert species_of(breed) == species


@pytest.mark.parametrize("name", ["my dog photo.jpg", "IMG.jpg", "beagle.jpg", "_12.jpg", "beagle_12a.jpg"])
def test_names_outside_the_pattern_have_no_label(name):
    assert breed_of(name) is None
    with pytest.raises(DataError, match="does not match"):
        label_from_path(name)


def test_pets_breed_lists_match_the_naming_convention():
    assert len(CAT_BREEDS) == 12 and len(DOG_BREEDS) == 25
    assert all(species_of(b) == "cat" for b in CAT_BREEDS)
    assert all(species_of(b) == "dog" for b in DOG_BREEDS)
    assert synth_classes(37) and set(synth_classes(37)) == set(CAT_BREEDS) | set(DOG_BREEDS)


def test_display_name_is_title_case_for_breeds_and_as_is_for_other_labels():
    assert display_name("great_pyrenees") == "Great Pyrenees" and display_name("Russian_Blue") == "Russian Blue"
    assert display_name("american_pit_bull_terrier") == "American Pit Bull Terrier"
    assert display_name("my_cat") == "my_cat" and display_name("Crème brûlée") == "Crème brûlée"


def test_pets_groups_only_when_every_class_is_a_breed():
    assert pets_groups(["beagle", "Bengal"]) == {"beagle": "dog", "Bengal": "cat"}
    assert pets_groups(["beagle", "tabby"]) is None and pets_groups([]) is None
