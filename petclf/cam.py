"""Grad-CAM: where the network looked. One implementation, shared by the report and the Gradio demo.

    from petclf.cam import gradcam, overlay
    heat = gradcam(model, x, class_idx=3)      # HxW in [0, 1] for one preprocessed image tensor (1x3xHxW)
    overlay(img, heat).save("cam.png")          # heat map blended over the RGB image

Uses the well-kept `grad-cam` package, whose hooks live inside a context manager (removed even on error).
The target layer is the backbone's last feature map (`model[0]`), which every timm body through fastai has.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn


def target_layer(model: nn.Module) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: the fastai body (its output is the last feature map)."""
    return model[0]


def gradcam(model: nn.Module, x: torch.Tensor, class_idx: int | list[int] | None = None) -> np.ndarray:
    """Grad-CAM maps (N x H x W in [0, 1]) for a batch `x`; `class_idx` defaults to each image's top class."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if isinstance(class_idx, int):
        class_idx = [class_idx] * len(x)
    targets = None if class_idx is None else [ClassifierOutputTarget(int(c)) for c in class_idx]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
            maps = cam(input_tensor=x, targets=targets)
    finally:
        model.train(was_training)
    return np.nan_to_num(maps.astype(np.float32))


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
