"""Grad-CAM: the hook-free implementation equals the `grad-cam` package's GradCAM on the same layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from petclf.cam import gradcam, gradcam_logits, overlay, target_layer
from petclf.model import build_model


@pytest.mark.parametrize("class_idx", [None, 2, [1, 3]])
def test_gradcam_equals_the_grad_cam_package(class_idx):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = build_model("resnet18", 4).eval()
    x = torch.randn(2, 3, 96, 96)
    mine = gradcam(model, x, class_idx)
    idx = [class_idx] * 2 if isinstance(class_idx, int) else class_idx
    targets = None if idx is None else [ClassifierOutputTarget(c) for c in idx]
    with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        ref = cam(input_tensor=x, targets=targets)
    assert mine.shape == ref.shape == (2, 96, 96)
    assert np.abs(mine - ref).max() < 1e-4
    assert mine.min() >= 0 and mine.max() <= 1


def test_gradcam_logits_are_the_networks_outputs():
    torch.manual_seed(0)
    model = build_model("resnet18", 4).eval()
    x = torch.randn(2, 3, 64, 64)
    heat, logits = gradcam_logits(model, x)
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-5)
    assert np.array_equal(heat, gradcam(model, x, logits.argmax(1).tolist()))  # None means each image's top class


def test_gradcam_works_inside_inference_mode_and_leaves_no_hooks():
    model = build_model("resnet18", 4).eval()
    with torch.inference_mode():
        x = torch.randn(1, 3, 64, 64)
        heat = gradcam(model, x, 0)
    assert heat.shape == (1, 64, 64) and np.isfinite(heat).all()
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    img = overlay(Image.new("RGB", (120, 80), (10, 200, 30)), heat[0])
    assert img.size == (120, 80) and img.mode == "RGB"
