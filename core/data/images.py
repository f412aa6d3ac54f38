"""Decoding posters into RGB pixels, whatever the file holds.

Every failure is an ``ImageError`` whose message names the file and the reason, so callers can
report it and skip the poster instead of crashing a whole extraction.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import warnings
from stat import S_ISDIR, S_ISREG
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.errors import ImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MAX_PIXELS = 50_000_000
"""Larger images are refused as possible decompression bombs (a poster is well under 10 MP)."""

RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

ImageSource = Union[str, Path, bytes, BinaryIO]

ImageFile.LOAD_TRUNCATED_IMAGES = False


def open_rgb(source: ImageSource, *, name: str | None = None) -> Image.Image:
    """Decode ``source`` fully into an 8-bit RGB image with EXIF orientation applied."""
    label = name or _label(source)
    if isinstance(source, (str, Path)):
        handle: BinaryIO = _open_file(Path(source), label)
    elif isinstance(source, bytes):
        if not source:
            raise ImageError(f"{label}: empty file (0 bytes)")
        handle = io.BytesIO(source)
    else:
        handle = source
    with handle, _decoding_errors(label):
        image = Image.open(handle)
        _check_size(image, label)
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)


def check_image_header(path: Path, *, name: str | None = None) -> None:
    """Read only the header of ``path``: raise ``ImageError`` if it is not an image of a usable size.

    The same size limit and messages as a full decode, so a 20000x20000 PNG is reported as too
    large here instead of stopping a whole dataset with ``DecompressionBombError``.
    """
    label = name or _label(path)
    with _open_file(Path(path), label) as handle, _decoding_errors(label):
        with Image.open(handle) as image:
            _check_size(image, label)


def _open_file(path: Path, label: str) -> BinaryIO:
    try:
        stat = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageError(f"{label}: symlink loop (following its links never reaches a file)") from err
        if path.is_symlink():
            raise ImageError(f"{label}: broken symbolic link (its target {os.readlink(path)} does not exist)") from err
        raise ImageError(f"{label}: cannot read file ({err.strerror or err})") from err
    if S_ISDIR(stat.st_mode):
        raise ImageError(f"{label}: is a folder, not an image file")
    if not S_ISREG(stat.st_mode):
        # Checked before any open: opening a FIFO for reading blocks until a writer comes.
        raise ImageError(f"{label}: not a regular file (a named pipe, socket or device)")
    if stat.st_size == 0:
        raise ImageError(f"{label}: empty file (0 bytes)")
    try:
        return open(path, "rb")
    except OSError as err:
        raise ImageError(f"{label}: cannot read file ({err.strerror or err})") from err


@contextlib.contextmanager
def _decoding_errors(label: str) -> Iterator[None]:
    """Turn every way Pillow can fail on a file into an ``ImageError`` that names it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{label}: too large to decode safely ({err})",
                         f"posters above {MAX_PIXELS:,} pixels are refused") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{label}: not an image (unrecognised format)") from err
    except OSError as err:
        raise ImageError(f"{label}: truncated or corrupt image ({err})") from err
    except (ValueError, SyntaxError, EOFError) as err:
        raise ImageError(f"{label}: corrupt image ({err})") from err


def load_pixels(source: ImageSource, size: int | tuple[int, int] = 224, resample: str = "bilinear", *,
                name: str | None = None) -> np.ndarray:
    """Decode and resize to ``(size, size, 3)`` uint8, squashing the aspect ratio as the tutorial did,
    or to ``(height, width, 3)`` for ``size=(width, height)``."""
    return resize_pixels(open_rgb(source, name=name), size, resample)


def resize_pixels(image: Image.Image, size: int | tuple[int, int] = 224, resample: str = "bilinear") -> np.ndarray:
    """``load_pixels`` of an image already decoded by ``open_rgb`` (left unchanged)."""
    image = image.resize((size, size) if isinstance(size, int) else tuple(size), RESAMPLING[resample])
    return np.asarray(image, dtype=np.uint8)


def check_image_bytes(data: bytes, name: str = "download") -> str:
    """Fully decode ``data`` and return its format name (e.g. ``"JPEG"``); raise ``ImageError`` if bad."""
    if not data:
        raise ImageError(f"{name}: empty response (0 bytes)")
    handle = io.BytesIO(data)
    open_rgb(handle, name=name)
    with Image.open(io.BytesIO(data)) as probe:
        return probe.format or "unknown"


def thumbnail(source: ImageSource, max_side: int = 256) -> Image.Image:
    image = open_rgb(source)
    image.thumbnail((max_side, max_side))
    return image


def _check_size(image: Image.Image, label: str) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"{label}: {width}x{height} pixels is too large to decode safely",
                         f"posters above {MAX_PIXELS:,} pixels are refused")
    if width == 0 or height == 0:
        raise ImageError(f"{label}: image has no pixels ({width}x{height})")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        grey = np.clip(array, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _label(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name
    return getattr(source, "name", None) or "image"
