"""Errors petclf reports to users as one line (exit code 2), never as a traceback."""


class PetclfError(Exception):
    """A user-facing problem: bad input, missing data, an unusable file."""


class DataError(PetclfError):
    """The training data cannot be found, read or used."""


class ImageError(PetclfError):
    """One image cannot be decoded into sane RGB."""


class BundleError(PetclfError):
    """An exported model is missing, corrupt, tampered with or from an incompatible version."""
