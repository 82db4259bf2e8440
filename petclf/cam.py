"""Grad-CAM: where the network looked. One implementation, shared by the report and the Gradio demo.

    from petclf.cam import gradcam, overlay
    heat = gradcam(model, x, class_idx=3)[0]   # HxW in [0, 1] for one preprocessed image tensor (1x3xHxW)
    overlay(img, heat).save("cam.png")          # heat map blended over the RGB image
Hook-free: the network is `nn.Sequential(body, head)` (fastai's layout for every timm body), so the body's
feature map is computed once and the gradient of the class score with respect to it comes from
`torch.autograd.grad`. No hooks are registered on the shared model, so a server can explain one image while
other threads predict with the same network. It gives the same maps as the `grad-cam` package's `GradCAM` on
`model[0]` (a test checks).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def target_layer(model: nn.Module) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: the fastai body (its output is the last feature map)."""
    return model[0]


def _scale(cam: torch.Tensor) -> torch.Tensor:
    """Per map: subtract the minimum, divide by the maximum (as `pytorch_grad_cam`'s `scale_cam_image`)."""
    flat = cam.flatten(1)
    flat = flat - flat.min(1, keepdim=True).values
    return (flat / (1e-7 + flat.max(1, keepdim=True).values)).view_as(cam)


def gradcam(model: nn.Module, x: torch.Tensor, class_idx: int | list[int] | None = None) -> np.ndarray:
    """Grad-CAM maps (N x H x W in [0, 1]) for a batch `x`; `class_idx` defaults to each image's top class."""
    return gradcam_logits(model, x, class_idx)[0]


def gradcam_logits(model: nn.Module, x: torch.Tensor,
                   class_idx: int | list[int] | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """`gradcam`, and the logits of the forward pass it ran (N x n_classes), for callers that need both."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone() if x.is_inference() else x
            with torch.no_grad():
                feats = target_layer(model)(x)
            feats = feats.detach().requires_grad_()
            logits = model[1:](feats)
            if class_idx is None:
                idx = logits.argmax(1)
            else:
                idx = torch.as_tensor([class_idx] * len(x) if isinstance(class_idx, int) else class_idx)
            score = logits.gather(1, idx.view(-1, 1).to(logits.device)).sum()
            (grads,) = torch.autograd.grad(score, feats)
    finally:
        model.train(was_training)
    with torch.no_grad():
        cam = F.relu((grads.mean((2, 3), keepdim=True) * feats).sum(1))
        cam = F.interpolate(_scale(cam)[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cam = _scale(cam.clamp_min(0))
    return np.nan_to_num(cam.float().cpu().numpy()), logits.detach().float().cpu()


def _jet(v: np.ndarray) -> np.ndarray:
    """Matplotlib-free 'jet' colormap: values in [0, 1] -> RGB uint8."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay(img: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a heat map (any size, values in [0, 1]) over `img` as a jet-coloured layer."""
    img = img.convert("RGB")
    heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(img.size, Image.BILINEAR)
    colored = Image.fromarray(_jet(np.asarray(heat_img, np.float32) / 255))
    return Image.blend(img, colored, alpha)
