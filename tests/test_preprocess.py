"""petclf.preprocess: fastai's validation transforms, reproduced in numpy, equal fastai's own pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from petclf.preprocess import Preprocess, crop_box


@pytest.mark.parametrize("size,presize", [(224, 460), (96, 128)])
def test_preprocessing_equals_fastai_validation_batch(synth_dir, size, presize):
    """Sizes where fastai's area-downsampling hack kicks in (460 -> 224) and where it does not."""
    from petclf.data import load_data, make_dataloaders

    pets = load_data(synth_dir, seed=42)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    dls = make_dataloaders(pets, bs=8, size=size, presize=presize, mean=mean, std=std, workers=0)
    xb, _ = dls.valid.one_batch()
    mine = Preprocess(size, presize, mean, std)(dls.valid_ds.items[:len(xb)])
    assert mine.shape == tuple(xb.shape)
    assert np.abs(mine - xb.cpu().numpy()).max() < 1e-4


@pytest.mark.parametrize("w,h,presize", [(500, 375, 460), (375, 500, 460), (461, 460, 460), (97, 61, 128)])
def test_crop_box_is_a_centred_square(w, h, presize):
    left, top, right, bottom = crop_box(w, h, presize)
    side = min(w, h)
    assert right - left == bottom - top and side - 1 <= right - left <= side
    assert abs(left - (w - right)) <= 1 and abs(top - (h - bottom)) <= 1
