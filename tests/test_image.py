"""Decoding: every mode becomes sane RGB, EXIF is applied, bad files fail with one clear line."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from petclf.errors import ImageError
from petclf.image import MAX_PIXELS, encode, load_rgb, to_rgb


def _arrow(w=40, h=20) -> Image.Image:
    """Left half red, right half blue: orientation is visible in the pixels."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2, 0] = 255
    a[:, w // 2:, 2] = 255
    return Image.fromarray(a)


@pytest.mark.parametrize("orientation,transpose", [(3, Image.ROTATE_180), (6, Image.ROTATE_270),
                                                   (8, Image.ROTATE_90)])
def test_exif_orientation_is_applied(tmp_path, orientation, transpose):
    upright = _arrow()
    stored = upright.transpose({3: Image.ROTATE_180, 6: Image.ROTATE_90, 8: Image.ROTATE_270}[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rot.jpg"
    stored.save(path, exif=exif, quality=95)
    out = np.asarray(load_rgb(path), np.int16)
    assert out.shape == (20, 40, 3)
    assert np.abs(out - np.asarray(upright, np.int16)).mean() < 8


def test_alpha_is_composited_on_white_not_black():
    a = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    out = np.asarray(to_rgb(Image.fromarray(a, "RGBA")))
    assert (out == 255).all()


def test_palette_with_transparency_and_cmyk_and_gray():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0
    out = np.asarray(load_rgb(encode(p, "PNG", transparency=0)))
    assert tuple(out[0, 0]) == (10, 200, 30) and tuple(out[1, 1]) == (255, 255, 255)
    cmyk = to_rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0)))
    assert cmyk.mode == "RGB" and tuple(np.asarray(cmyk)[0, 0]) == (255, 0, 0)
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((0, 0)) == (77, 77, 77)


def test_16_bit_png_is_scaled_not_clipped_to_white():
    a = np.array([[0, 32768, 65535]], np.uint16)
    out = np.asarray(load_rgb(encode(Image.fromarray(a), "PNG")))[0, :, 0]
    assert list(out) == [0, 128, 255]


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    first = np.asarray(load_rgb(path))
    assert first[..., 0].mean() > 200 and first[..., 2].mean() < 50
    assert np.array_equal(first, np.asarray(load_rgb(path)))


def test_arrays_and_pil_images_are_accepted():
    assert load_rgb(np.zeros((5, 7), np.uint8)).size == (7, 5)
    assert load_rgb(np.ones((5, 7, 3), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(Image.new("RGBA", (3, 3))).mode == "RGB"
    with pytest.raises(ImageError, match="not an image"):
        load_rgb(np.zeros((2, 2, 2, 2)))


@pytest.mark.parametrize("data,match", [
    (b"", "empty file"),
    (b"plain text, renamed", "not an image"),
    (b"MATLAB 5.0 MAT-file" * 10, "not an image"),
])
def test_not_an_image(tmp_path, data, match):
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=match):
        load_rgb(path)


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_rgb(path)


def _huge_png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels but carries almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageError, match="limit|too large"):
        load_rgb(_huge_png_header(20000, 20000))
    assert 20000 * 20000 > MAX_PIXELS


def test_size_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.new("RGB", (8, 8)), "PNG") + b"\0" * 2048)
    with pytest.raises(ImageError, match="over the"):
        load_rgb(path, max_bytes=1024)


def test_tiny_and_extreme_aspect_images_decode():
    assert load_rgb(Image.new("RGB", (1, 1))).size == (1, 1)
    assert load_rgb(Image.new("RGB", (4000, 10))).size == (4000, 10)


def test_a_bomb_file_is_refused_with_flat_memory(tmp_path):
    import resource

    path = tmp_path / "bomb.png"
    path.write_bytes(_huge_png_header(30000, 30000))  # 2.7 GB of pixels if decoded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match="limit|too large"):
        load_rgb(path)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 50  # MB


def test_webp_decodes_to_the_same_pixels():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(load_rgb(encode(img, "WEBP", lossless=True))), np.asarray(img))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _zeros_deflated(n_blocks: int, block: int = 1 << 24) -> bytes:
    """A valid zlib stream of n_blocks x 16 MB of zeros, in about a second: deflate restarts after a full flush,
    so every block after the first compresses to the same bytes."""
    c, zeros = zlib.compressobj(9), bytes(block)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    rest = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(n_blocks):
        adler = zlib.adler32(zeros, adler)
    return first + rest * (n_blocks - 1) + c.flush()[:-4] + struct.pack(">I", adler)


def test_png_with_a_truncated_ihdr_chunk_is_this_files_error(tmp_path):
    path = tmp_path / "short.png"
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr[:9]) + _chunk(b"IEND", b""))
    with pytest.raises(ImageError, match=r"^short.png: corrupt or truncated image \(Truncated IHDR chunk\)$"):
        load_rgb(path)


@pytest.mark.parametrize("kind,body", [(b"zTXt", b"Comment\0\0"), (b"iCCP", b"icc\0\0")])
def test_png_text_or_icc_chunk_inflating_to_1_gb_is_refused(tmp_path, kind, body):
    """Pillow inflates text and ICC chunks only up to ImageFile's limits (1 MB a chunk) and raises ValueError
    past them; that error must name this file, not stop a whole run."""
    path = tmp_path / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    pixels = zlib.compress((b"\0" + bytes(24)) * 8)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(kind, body + _zeros_deflated(64))
                     + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b""))
    with pytest.raises(ImageError, match=r"^bomb.png: corrupt or truncated image \(Decompressed data too large"):
        load_rgb(path)


def test_a_symlink_loop_or_a_vanished_file_is_this_files_error(tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageError, match=r"^loop.jpg: cannot read \(Too many levels of symbolic links\)$"):
        load_rgb(loop)
    with pytest.raises(ImageError, match="^gone.jpg: file not found$"):
        load_rgb(tmp_path / "gone.jpg")


def _heic(path) -> None:
    """A real HEIC photo (left red, right blue), written by pillow-heif without registering it with Pillow."""
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.from_pillow(_arrow(64, 32)).save(path, quality=95)


def _decode_in_fresh_python(path, block_heif: bool = False) -> str:
    """load_rgb(path) in a new interpreter (Pillow knows no HEIF there until petclf registers it): pixels or error."""
    import subprocess
    import sys

    blocked = "sys.modules['pi_heif'] = sys.modules['pillow_heif'] = None\n"
    code = ("import sys\n" + (blocked if block_heif else "") +
            "from petclf.image import load_rgb\nfrom petclf.errors import ImageError\n"
            f"try:\n    im = load_rgb({str(path)!r})\n    print(im.size, im.getpixel((8, 16)), im.getpixel((56, 16)))\n"
            "except ImageError as e:\n    print(e)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_heic_photos_decode_through_pi_heif(tmp_path):
    _heic(tmp_path / "iphone.heic")
    size, left, right = _decode_in_fresh_python(tmp_path / "iphone.heic").split(") (")
    assert size == "(64, 32"
    r, g, b = map(int, left.strip("()").split(","))
    assert r > 200 and b < 60  # red on the left (HEVC is lossy)
    r, g, b = map(int, right.strip("()").split(","))
    assert b > 200 and r < 60


def test_heic_without_a_heif_decoder_says_so(tmp_path):
    _heic(tmp_path / "iphone.heic")
    assert _decode_in_fresh_python(tmp_path / "iphone.heic", block_heif=True) == \
        "iphone.heic: HEIC is not supported (install pi-heif)"
