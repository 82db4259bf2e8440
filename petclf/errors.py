"""Errors petclf reports to users as one line (exit code 2), never as a traceback, and hints in the user's
words."""

import os
import re


class PetclfError(Exception):
    """A user-facing problem: bad input, missing data, an unusable file."""


class DataError(PetclfError):
    """The training data cannot be found, read or used."""


class ImageError(PetclfError):
    """One image cannot be decoded into sane RGB."""


class BundleError(PetclfError):
    """An exported model is missing, corrupt, tampered with or from an incompatible version."""


# ---------------------------------------------------------------------------------------------------- hints A
# hint quotes the command the user typed: through `make train` a flag goes in ARGS, so the Makefile says which
# target ran (PETCLF_VIA_MAKE) and where its petclf is (PETCLF_CMD).

VIA_MAKE_ENV, CMD_ENV = "PETCLF_VIA_MAKE", "PETCLF_CMD"
_HINT = re.compile(r"\b(pass|use|with|or) (--[a-z][\w-]*(?: (?:[A-Z][A-Z:_]+|[^\s,;)]*/[^\s,;)]*|cpu|auto|\d[\w.]*))?)")
_COMMAND = re.compile(r"`?petclf (train|demo) (--[^`]*?)`?(?=$|[;,)]|`)")


def as_typed(msg: str) -> str:
    """`msg` with its advice in the user's own words: `pass --data DIR` becomes `run make train ARGS="--data
    DIR"` when the command ran through `make train`; unchanged otherwise."""
    target = os.environ.get(VIA_MAKE_ENV)
    if not target:
        return msg
    msg = _COMMAND.sub(lambda m: f'make {m[1]} ARGS="{m[2].strip()}"' if m[1] == target else m[0], msg)
    verb = {"pass": "run", "use": "run"}  # "pass make train ..." would not read
    return _HINT.sub(lambda m: f'{verb.get(m[1], m[1])} make {target} ARGS="{m[2]}"', msg)


def petclf_command() -> str:
    """How the user runs petclf: `petclf`, or the virtual environment's when it came through make."""
    return os.environ.get(CMD_ENV) or "petclf"
