"""Behaviours locked in for ``core.data.images``, decoding posters whatever the file holds.

- Greyscale, palette, palette with transparency, RGBA, LA, CMYK JPEG, 16-bit PNG (I;16) and 1-bit
  images all become RGB uint8 ``(size, size, 3)`` with sensible values: 16-bit white is 255, 16-bit
  mid-grey is about 128, transparent pixels sit on a white background.
- The EXIF orientation is applied before resizing (Orientation=6 turns a 40x20 JPEG into 20x40).
- Paths, bytes and file objects are all accepted; the resize squashes to a square.
- Truncated JPEG, zero-byte file, text named .jpg, a decompression bomb (a real image above
  ``MAX_PIXELS`` or a PNG header claiming a huge size) raise ``ImageError`` naming the file and reason.
- ``check_image_bytes`` returns the format name of good bytes and raises ``ImageError`` on bad ones.
- ``check_image_header`` reads only the header and gives the decoder's reasons: too large (also above
  Pillow's own bomb limit), not an image, empty; a folder or a broken link is an ``ImageError`` too.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.data.images
from core.errors import ImageError
from core.data.images import check_image_bytes, load_pixels, open_rgb


def _save(image: Image.Image, path: Path, fmt: str, **params) -> Path:
    image.save(path, format=fmt, **params)
    return path


def _jpeg_bytes(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.paste(1, (0, 0, 5, 10))
    image.info["transparency"] = 0
    return image


CASES = {
    "greyscale L": (Image.new("L", (12, 16), 90), "PNG", {}, (90, 90, 90)),
    "palette P": (Image.new("RGB", (12, 16), (0, 0, 255)).convert("P"), "PNG", {}, (0, 0, 255)),
    "RGBA transparent": (Image.new("RGBA", (12, 16), (255, 0, 0, 0)), "PNG", {}, (255, 255, 255)),
    "RGBA opaque": (Image.new("RGBA", (12, 16), (255, 0, 0, 255)), "PNG", {}, (255, 0, 0)),
    "LA transparent": (Image.new("LA", (12, 16), (0, 0)), "PNG", {}, (255, 255, 255)),
    "CMYK JPEG white": (Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG", {"quality": 95}, (255, 255, 255)),
    "16-bit white": (Image.new("I;16", (12, 16), 65535), "PNG", {}, (255, 255, 255)),
    "1-bit white": (Image.new("1", (12, 16), 1), "PNG", {}, (255, 255, 255)),
    "1-bit black": (Image.new("1", (12, 16), 0), "PNG", {}, (0, 0, 0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_mode_becomes_rgb_uint8_with_sensible_values(tmp_path, case):
    image, fmt, params, expected = CASES[case]
    path = _save(image, tmp_path / f"poster.{fmt.lower()}", fmt, **params)
    assert open_rgb(path).mode == "RGB"
    pixels = load_pixels(path, size=8)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    np.testing.assert_allclose(pixels.reshape(-1, 3).mean(axis=0), expected, atol=3)


def test_16_bit_mid_grey_is_scaled_not_clipped(tmp_path):
    path = _save(Image.fromarray(np.full((8, 8), 32768, np.uint16)), tmp_path / "mid.png", "PNG")
    assert Image.open(path).mode.startswith("I")
    assert abs(int(load_pixels(path, size=4)[0, 0, 0]) - 128) <= 1


def test_palette_transparency_becomes_white_and_opaque_entries_keep_colour(tmp_path):
    path = _save(_palette_with_transparency(), tmp_path / "p.png", "PNG", transparency=0)
    pixels = np.asarray(open_rgb(path))
    assert tuple(pixels[0, 0]) == (0, 0, 255)
    assert tuple(pixels[0, 9]) == (255, 255, 255)


def test_exif_orientation_is_applied_before_resizing(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))
    path = _save(image, tmp_path / "rotated.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    upright = open_rgb(path)
    assert upright.size == (20, 40)
    pixels = np.asarray(upright, dtype=float)
    assert pixels[:20].mean() > 200 and pixels[20:].mean() < 50


def test_bytes_and_file_objects_are_accepted_and_resize_squashes(tmp_path):
    data = _jpeg_bytes(size=(30, 90))
    from_bytes = load_pixels(data, size=16)
    from_handle = load_pixels(io.BytesIO(data), size=16)
    assert from_bytes.shape == (16, 16, 3)
    np.testing.assert_array_equal(from_bytes, from_handle)
    assert abs(int(from_bytes[8, 8, 0]) - 200) < 10


def test_truncated_jpeg_raises_image_error_naming_file(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(_jpeg_bytes(size=(200, 200))[:400])
    with pytest.raises(ImageError, match=r"cut\.jpg: .*truncated"):
        open_rgb(path)


def test_zero_byte_file_raises_image_error(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file"):
        load_pixels(path)


def test_text_named_jpg_raises_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a poster\n" * 20)
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image"):
        load_pixels(path)


def test_missing_file_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match=r"gone\.jpg: cannot read"):
        open_rgb(tmp_path / "gone.jpg")


def test_image_above_max_pixels_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(core.data.images, "MAX_PIXELS", 100)
    path = _save(Image.new("RGB", (20, 20)), tmp_path / "big.png", "PNG")
    with pytest.raises(ImageError, match=r"big\.png: 20x20 pixels is too large") as caught:
        open_rgb(path)
    assert "100" in caught.value.hint


@pytest.mark.parametrize("side", [8_000, 100_000])
def test_png_header_claiming_huge_size_is_refused_without_decoding(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(side, side))
    with pytest.raises(ImageError, match=r"bomb\.png: .*too large"):
        open_rgb(path)


def test_check_image_bytes_returns_format():
    assert check_image_bytes(_jpeg_bytes()) == "JPEG"
    buffer = io.BytesIO()
    Image.new("RGBA", (5, 5)).save(buffer, format="PNG")
    assert check_image_bytes(buffer.getvalue()) == "PNG"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty response"),
    (b"<html>404 not found</html>", "not an image"),
    (_jpeg_bytes(size=(200, 200))[:300], "truncated"),
    (_png_header(100_000, 100_000), "too large"),
])
def test_check_image_bytes_raises_on_bad_bytes(data, reason):
    with pytest.raises(ImageError, match=rf"poster-7: .*{reason}"):
        check_image_bytes(data, name="poster-7")


@pytest.mark.parametrize("side, reason", [(8_000, "8000x8000 pixels is too large"), (20_000, "too large to decode")])
def test_check_image_header_reports_oversize_without_decoding(tmp_path, side, reason):
    from core.data.images import check_image_header

    path = tmp_path / "huge.png"
    path.write_bytes(_png_header(side, side))
    with pytest.raises(ImageError, match=rf"huge\.png: .*{reason}"):
        check_image_header(path)


def test_folders_and_broken_links_are_image_errors(tmp_path):
    from core.data.images import check_image_header

    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    for name, reason in [("dir.jpg", "is a folder"), ("link.jpg", "broken symbolic link")]:
        with pytest.raises(ImageError, match=reason):
            open_rgb(tmp_path / name)
        with pytest.raises(ImageError, match=reason):
            check_image_header(tmp_path / name)
