"""Fuzzing `image.load_rgb`: mutated files of every format Pillow (and pillow-heif) saves here either decode or
fail as `ImageError`, the one error a caller turns into that file's error row; no other exception escapes.

2,000 seeded mutations (byte flips, boundary values, truncation, insertion) of a small image in each of 21 formats:
42,000 decodes in about 30 s on 2 busy cores. Before `load_rgb` caught every plugin's errors, 300 per format let
RuntimeError (AVIF), IndexError (QOI), ValueError (PPM, IM, SGI, PNG, JPEG2000), NotImplementedError (DDS) and
BLPFormatError escape.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from PIL import Image

from petclf.errors import ImageError
from petclf.image import encode, load_rgb

MUTATIONS = 2000  # per format
MAX_PIXELS = 1 << 20  # a mutated header may claim a large image; decoding one would only cost time
# format -> mode it is saved from (16 px square: ICO keeps only sizes up to the image's)
FORMATS = {"JPEG": "RGB", "PNG": "RGBA", "GIF": "P", "WEBP": "RGB", "BMP": "RGB", "TIFF": "RGB", "ICO": "RGBA",
           "PPM": "RGB", "TGA": "RGB", "JPEG2000": "RGB", "PCX": "RGB", "SGI": "RGB", "IM": "RGB", "DIB": "RGB",
           "MSP": "1", "BLP": "P", "DDS": "RGB", "QOI": "RGB", "XBM": "1", "AVIF": "RGB", "HEIF": "RGB"}


def _clean(fmt: str) -> bytes:
    a = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif").register_heif_opener()
    try:
        return encode(Image.fromarray(a).convert(FORMATS[fmt]), fmt)
    except (KeyError, OSError) as e:  # a Pillow built without this codec
        pytest.skip(f"Pillow cannot write {fmt} here ({e})")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation: flip bytes, set bytes to boundary values, truncate, or insert random bytes."""
    b = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF))
    elif kind == 2:
        del b[rng.randrange(1, len(b)):]
    else:
        pos = rng.randrange(len(b))
        b[pos:pos] = rng.randbytes(rng.randint(1, 16))
    return bytes(b)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_mutated_images_decode_or_raise_image_error_only(fmt):
    data = _clean(fmt)
    assert load_rgb(data).size == (16, 16)
    rng = random.Random(f"petclf-{fmt}")
    decoded, refused, escaped = 0, 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF and the like; not what is tested here
        for i in range(MUTATIONS):
            try:
                load_rgb(mutate(data, rng), max_pixels=MAX_PIXELS)
                decoded += 1
            except ImageError as e:
                assert str(e).startswith("upload: ") and "\n" not in str(e)
                refused += 1
            except Exception as e:  # noqa: BLE001 - what the test looks for
                escaped.append(f"mutation {i}: {type(e).__name__}: {e}")
    assert not escaped, f"{len(escaped)} escaped, e.g. {escaped[:3]}"
    assert decoded and refused  # the mutations reach both outcomes
