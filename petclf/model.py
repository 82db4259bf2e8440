"""The network: a timm backbone with a fastai head, built the same way for training and for loading a bundle.

    from petclf.model import build_model, norm_stats
    net = build_model("resnet34", n_out=37)            # fastai's create_timm_model, random weights
    mean, std = norm_stats("resnet34")                 # the backbone's pretrained normalisation
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from petclf.errors import PetclfError

# fastai's vision_learner head (create_head); recorded in every bundle so the network can be rebuilt exactly.
FASTAI_HEAD: dict[str, Any] = {"kind": "fastai", "concat_pool": True, "lin_ftrs": None, "ps": 0.5,
                               "first_bn": True, "bn_final": False, "lin_first": False}


def check_arch(arch: str) -> None:
    """Fail with one line if `arch` is not a timm model name."""
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise PetclfError(f"unknown timm architecture {arch!r} (timm {timm.__version__}){hint}")


def norm_stats(arch: str) -> tuple[list[float], list[float]]:
    """(mean, std) the backbone's pretrained weights expect, from timm's pretrained config."""
    check_arch(arch)
    cfg = timm.models.get_pretrained_cfg(arch) or {}
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    return list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))


def linear_head(nf: int, n_out: int, pool: bool = True) -> nn.Sequential:
    """Average pool + one linear layer: the head a linear probe trains."""
    from fastai.layers import Flatten

    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), Flatten()] if pool else []
    return nn.Sequential(*layers, nn.Linear(nf, n_out))


def build_model(arch: str, n_out: int, head: dict[str, Any] | None = None, pretrained: bool = False,
                **timm_kwargs) -> nn.Module:
    """`nn.Sequential(TimmBody, head)` exactly as fastai's `vision_learner` builds it; `head` as in a bundle."""
    from fastai.vision.learner import create_timm_model

    check_arch(arch)
    head = dict(FASTAI_HEAD if head is None else head)
    kind = head.pop("kind", "fastai")
    if kind == "linear":
        body_model = timm.create_model(arch, pretrained=pretrained, num_classes=0, **timm_kwargs)
        from fastai.vision.learner import TimmBody

        body = TimmBody(body_model, pretrained)
        return nn.Sequential(body, linear_head(body_model.num_features, n_out, pool=body.needs_pool))
    if kind != "fastai":
        raise PetclfError(f"unknown head kind {kind!r}")
    model, _ = create_timm_model(arch, n_out, pretrained=pretrained, **head, **timm_kwargs)
    return model


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())

