"""The 37 Oxford-IIIT Pets breeds and how a file name, a species and a display name follow from them.

    from petclf.labels import breed_of, species_of, display_name, pets_groups
    breed_of("great_pyrenees_12.jpg")    # 'great_pyrenees': the breed id, the machine key everywhere
    species_of("Russian_Blue")           # 'cat': cat breeds are Capitalized, dog breeds lowercase
    display_name("great_pyrenees")       # 'Great Pyrenees': the one name people see, on every surface
    pets_groups(["beagle", "Bengal"])    # {'beagle': 'dog', 'Bengal': 'cat'}; None when a class is not a breed
Any other dataset's labels are any text; they are shown as they are, and their groups (if any) come from the
user.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from petclf.errors import DataError

LABEL_RE = re.compile(r"^(?P<breed>[A-Za-z]+(?:_[A-Za-z]+)*)_(?P<number>\d+)$")

# The 37 Oxford-IIIT Pets breeds, as they appear in its file names.
CAT_BREEDS = ("Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon",
              "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx")
DOG_BREEDS = ("american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer", "chihuahua",
              "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese",
              "japanese_chin", "keeshond", "leonberger", "miniature_pinscher", "newfoundland", "pomeranian", "pug",
              "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier",
              "wheaten_terrier", "yorkshire_terrier")


def breed_of(path: str | Path) -> str | None:
    """Breed from a Pets file name (`great_pyrenees_12.jpg` -> `great_pyrenees`), or None if it does not
    match."""
    m = LABEL_RE.match(Path(path).stem)
    return m["breed"] if m else None


def label_from_path(path: str | Path) -> str:
    """fastai `get_y`: the breed, or an error for a file name outside the pattern."""
    breed = breed_of(path)
    if breed is None:
        raise DataError(f"{Path(path).name}: file name does not match <breed>_<number>.<ext>")
    return breed


def species_of(breed: str) -> str:
    """`cat` for Capitalized breeds, `dog` for lowercase ones (the Pets naming convention)."""
    return "cat" if breed[:1].isupper() else "dog"


PETS_BREEDS = frozenset(CAT_BREEDS + DOG_BREEDS)
PETS_GROUP_NAME = "species"  # what the second level is called for Pets: cat or dog


def class_noun(group_name: str | None) -> str:
    """What one class is called in words: `breed` for Pets (its groups are species), `class` for other
    data."""
    return "breed" if group_name == PETS_GROUP_NAME else "class"


def plural(noun: str) -> str:
    """`class` -> `classes`, `breed` -> `breeds`."""
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def error_kind(record: dict[str, Any]) -> str:
    """What a run's recorded error rate is, in words (`record`: a manifest or metrics.json): a probe's
    cross-validation estimate, or a fine-tuned network's error on its validation split."""
    recipe = record.get("recipe")
    estimate = record.get("estimate") or (recipe.get("estimate") if isinstance(recipe, dict) else None)
    return "cross-validation error" if "cross-validation" in str(estimate or "") else "validation error"


def error_name(split: str, split_used: str) -> str:
    """What the report's error rate is, in words: which photos it was measured on."""
    if split_used == "out-of-fold":
        return "cross-validation error"
    return {"valid": "validation error", "test": "test error", "all": "error on new photos"}.get(
        split, "error on the named photos")


def display_name(label: str) -> str:
    """The name people see: a Pets breed id in Title Case (`great_pyrenees` -> `Great Pyrenees`); any other
    label as it is (a user's class names are already for people)."""
    if label not in PETS_BREEDS:
        return label
    return " ".join(w[:1].upper() + w[1:] for w in label.split("_"))


def pets_groups(classes: list[str]) -> dict[str, str] | None:
    """{breed: cat|dog} when every class is a Pets breed (Pets' built-in groups), else None."""
    if not classes or not all(c in PETS_BREEDS for c in classes):
        return None
    return {c: species_of(c) for c in classes}
