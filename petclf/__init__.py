"""petclf: fine-tune a pretrained timm model on Oxford-IIIT Pets with fastai, serve it, and explain its
mistakes.

    petclf train --data data/oxford-iiit-pet     # or `make train`
    petclf --help

The public API is re-exported here; heavy modules (fastai, torch) load on first use.
"""

from petclf.config import TrainConfig, resolve_config, save_config
from petclf.errors import BundleError, DataError, ImageError, PetclfError
from petclf.version import __version__

__all__ = ["__version__", "TrainConfig", "resolve_config", "save_config", "PetclfError", "DataError", "ImageError",
           "BundleError", "load_model"]


def __getattr__(name: str):
    """Lazy re-exports: `petclf.load_model` imports the predictor only when first used."""
    if name == "load_model":
        from petclf.predict import load_model

        return load_model
    raise AttributeError(f"module 'petclf' has no attribute {name!r}")
