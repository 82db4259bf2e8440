"""petclf.device: device, precision, layout and thread choices are plain logic over what a machine has."""

from __future__ import annotations

import pytest

from petclf.device import pick_channels_last, pick_device, pick_precision, pick_threads
from petclf.errors import PetclfError


def test_pick_device():
    assert pick_device("auto", cuda=True, mps=True) == "cuda"
    assert pick_device("auto", cuda=False, mps=True) == "mps"
    assert pick_device("auto", cuda=False, mps=False) == "cpu"
    assert pick_device("cuda:1", cuda=True, mps=False) == "cuda:1"
    with pytest.raises(PetclfError, match="no CUDA"):
        pick_device("cuda", cuda=False, mps=False)
    with pytest.raises(PetclfError, match="MPS"):
        pick_device("mps", cuda=True, mps=False)
    with pytest.raises(PetclfError, match="--device"):
        pick_device("tpu", cuda=True, mps=True)


def test_pick_precision_and_threads():
    assert pick_precision("cuda", "auto", bf16_ok=True) == "bf16"
    assert pick_precision("cuda:0", "auto", bf16_ok=False) == "fp16"
    assert pick_precision("cpu", "auto", bf16_ok=False) == "fp32"
    assert pick_precision("mps", "auto", bf16_ok=True) == "fp32"
    assert pick_precision("cuda", "fp32", bf16_ok=True) == "fp32"
    assert pick_threads(8) == 8 and pick_threads(8, 2) == 2 and pick_threads(0) == 1


def test_pick_channels_last():
    assert pick_channels_last("cpu", "auto") and pick_channels_last("cuda:1", "auto")
    assert not pick_channels_last("mps", "auto") and pick_channels_last("mps", "on")
    assert not pick_channels_last("cuda", "off")
