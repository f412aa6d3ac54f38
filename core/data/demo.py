"""The embedded default dataset: synthetic labelled posters drawn offline, deterministically.

Each genre owns a style (background palette, motif, title band, texture). A poster with several
genres mixes them: the background comes from one of its genres, most of its genres add their motif,
the band and the texture come from any of them. Stray motifs from unlabelled genres, actor-like
occluders and noise keep the task learnable but not trivially perfect.

The cached demo dataset is generated into a temporary sibling folder and renamed into place, so readers
and concurrent generators only ever see a complete folder. ``demo --out`` writes into a folder the user
named, so there only the demo's own files are replaced, ``dataset.json`` last (``core.outputs``).
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from core.cache import cache_root
from core.data.datasets import INFO_FILE, LABELS_FILE, POSTERS_DIR, read_info, write_info, write_labels
from core.errors import DatasetError
from core.outputs import OutputKind, claim
from core.progress import ProgressFn, ProgressTracker

GENERATOR_VERSION = 2
"""Part of the cached folder's name and of dataset.json: bumped whenever the same seed draws other pixels
(2: the grain reads its Gaussian values from a quantile table), so an older cached demo, and the features
extracted from it, are regenerated rather than mistaken for this generator's."""
DEMO_NAME = "Synthetic demo posters (generated)"
DEMO_SOURCE = "python -m core demo"
DEMO_GENRES: tuple[str, ...] = (
    "Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Animation", "Western",
)
GENRE_WEIGHTS = (0.16, 0.25, 0.40, 0.10, 0.12, 0.08, 0.06, 0.04)
"""Relative frequencies, imbalanced like real poster sets where Drama dominates."""
GENRES_PER_POSTER_P = (0.45, 0.37, 0.18)
MOTIF_P = 0.8
STRAY_MOTIF_P = 0.08
OCCLUDER_P = 0.6
PATCH_P = 0.25
JPEG_QUALITY = 90
STALE_TEMP_S = 3600

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class DemoConfig:
    n_posters: int = 500
    seed: int = 0
    width: int = 182
    height: int = 268


@dataclass
class _Canvas:
    draw: ImageDraw.ImageDraw
    rng: np.random.Generator
    width: int
    height: int

    def colour(self, palette: tuple[RGB, ...], jitter: int = 18) -> RGB:
        base = np.array(palette[int(self.rng.integers(len(palette)))])
        return _rgb(base + self.rng.integers(-jitter, jitter + 1, size=3))

    def point(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> tuple[float, float]:
        return (self.width * self.rng.uniform(*x_range), self.height * self.rng.uniform(*y_range))


@dataclass(frozen=True)
class _Style:
    sky: tuple[RGB, RGB]
    accents: tuple[RGB, ...]
    band: RGB
    band_at: float
    """Vertical centre of the title band, as a fraction of the height."""
    motif: Callable[[_Canvas, "_Style"], None]
    texture: Callable[[np.ndarray, np.random.Generator], np.ndarray]


def make_demo_dataset(out: str | Path, config: DemoConfig = DemoConfig(),
                      progress: ProgressFn | None = None) -> Path:
    """Generate the demo dataset into ``out``, replacing the files of an earlier demo dataset there and
    keeping every other file (``core.outputs``)."""
    _check_config(config)
    with claim(out, DEMO_OUTPUT) as output:
        output.replace_with(lambda staging: write_demo_files(staging, config, progress))
    return output.root


def demo_dataset_dir() -> Path:
    return cache_root() / "datasets" / f"synthetic-demo-v{GENERATOR_VERSION}"


def ensure_demo_dataset(config: DemoConfig = DemoConfig(), progress: ProgressFn | None = None) -> Path:
    """The cached demo dataset folder, generated first when missing, incomplete or outdated."""
    target = demo_dataset_dir()
    if is_complete(target, config):
        return target
    _check_config(config)
    _remove_stale_temps(target)
    return _generate_and_install(target, config, progress, keep_complete=True)


def is_complete(root: Path, config: DemoConfig) -> bool:
    """True when ``root`` holds a finished demo dataset made by this generator from ``config``."""
    root = Path(root)
    if not (root / LABELS_FILE).is_file() or not (root / INFO_FILE).is_file():
        return False
    info = read_info(root)
    expected = {"generator_version": GENERATOR_VERSION, "n_posters": config.n_posters,
                "seed": config.seed, "width": config.width, "height": config.height}
    if any(info.get(key) != value for key, value in expected.items()):
        return False
    posters = root / POSTERS_DIR
    return posters.is_dir() and sum(1 for p in posters.iterdir() if p.suffix == ".jpg") == config.n_posters


def write_demo_files(root: Path, config: DemoConfig, progress: ProgressFn | None = None) -> None:
    """Draw every poster into ``root``, then write labels.csv and dataset.json (in that order)."""
    labels = _sample_labels(config.n_posters, np.random.default_rng(config.seed))
    digits = max(4, len(str(config.n_posters)))
    (root / POSTERS_DIR).mkdir(parents=True, exist_ok=True)
    rows = []
    tracker = ProgressTracker(config.n_posters, "posters", progress)
    for index, genres in enumerate(labels):
        number = f"{index + 1:0{digits}d}"
        image = render_poster(genres, config, np.random.default_rng((config.seed, index)))
        (root / POSTERS_DIR / f"demo-{number}.jpg").write_bytes(_jpeg(image))
        rows.append((f"demo-{number}", f"Synthetic poster {number}", genres))
        tracker.update(index + 1)
    write_labels(root, rows)
    write_info(root, name=DEMO_NAME, synthetic=True, source=DEMO_SOURCE, seed=config.seed,
               n_posters=config.n_posters, width=config.width, height=config.height,
               generator_version=GENERATOR_VERSION, genres=list(DEMO_GENRES))


def render_poster(genres: tuple[str, ...], config: DemoConfig, rng: np.random.Generator) -> Image.Image:
    styles = [_STYLES[genre] for genre in genres]
    background = styles[int(rng.integers(len(styles)))]
    image = _gradient(background.sky, config.width, config.height, rng)
    canvas = _Canvas(ImageDraw.Draw(image), rng, config.width, config.height)
    for style in _motif_styles(genres, rng):
        style.motif(canvas, style)
    _occluders(canvas)
    _title_band(canvas, styles[int(rng.integers(len(styles)))])
    _credits(canvas)
    texture = styles[int(rng.integers(len(styles)))].texture
    pixels = texture(np.asarray(image, dtype=np.float32), rng)
    pixels *= rng.uniform(0.88, 1.12)
    pixels += rng.uniform(-12, 12)
    return Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8))


def _sample_labels(n: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Imbalanced 1-3 genre labels; the first posters show each genre alone so every genre appears."""
    weights = np.array(GENRE_WEIGHTS) / sum(GENRE_WEIGHTS)
    labels = []
    for index in range(n):
        size = int(rng.choice(len(GENRES_PER_POSTER_P), p=GENRES_PER_POSTER_P)) + 1
        drawn = set(rng.choice(len(DEMO_GENRES), size=size, replace=False, p=weights).tolist())
        if index < len(DEMO_GENRES):
            drawn = {index}
        labels.append(tuple(DEMO_GENRES[i] for i in sorted(drawn)))
    return labels


def _motif_styles(genres: tuple[str, ...], rng: np.random.Generator) -> list[_Style]:
    chosen = [genre for genre in genres if rng.random() < MOTIF_P]
    if not chosen:
        chosen = [genres[int(rng.integers(len(genres)))]]
    others = [genre for genre in DEMO_GENRES if genre not in genres]
    if others and rng.random() < STRAY_MOTIF_P:
        chosen.append(others[int(rng.integers(len(others)))])
    return [_STYLES[genre] for genre in rng.permutation(chosen).tolist()]


def _generate_and_install(target: Path, config: DemoConfig, progress: ProgressFn | None,
                          keep_complete: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        os.chmod(temp, 0o755)
        write_demo_files(temp, config, progress)
        _install(temp, target, config, keep_complete)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


def _install(temp: Path, target: Path, config: DemoConfig, keep_complete: bool) -> None:
    """Rename ``temp`` to ``target``; a complete ``target`` that appeared meanwhile may be kept."""
    for _ in range(5):
        try:
            os.rename(temp, target)
            return
        except OSError:
            if not target.exists():
                raise
        if keep_complete and is_complete(target, config):
            return
        _discard(target)
    raise DatasetError(f"could not move the generated demo dataset into {target}",
                       "another process keeps replacing it; try again once it has finished")


def _discard(folder: Path) -> None:
    aside = folder.with_name(f".{folder.name}.old-{os.getpid()}-{time.monotonic_ns()}.tmp")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _remove_stale_temps(target: Path) -> None:
    """Drop temporary folders left by generations that were killed long ago."""
    if not target.parent.is_dir():
        return
    for path in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            if time.time() - path.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            continue


def _check_config(config: DemoConfig) -> None:
    if config.n_posters < 1:
        raise DatasetError(f"demo n_posters must be at least 1, got {config.n_posters}",
                           "ask for a positive number of posters, e.g. 500")
    if config.width < 64 or config.height < 64:
        raise DatasetError(f"demo poster size {config.width}x{config.height} is too small to draw",
                           "use at least 64x64; real posters are about 182x268")


def legacy_demo_files(root: Path) -> set[str] | None:
    """A demo folder written before manifests (its dataset.json names the demo as its source): its
    labels.csv, dataset.json and ``posters/demo-*.jpg`` are ours, anything else stays the user's."""
    if read_info(root).get("source") != DEMO_SOURCE:
        return None
    posters = root / POSTERS_DIR
    names = [path.name for path in posters.glob("demo-*.jpg")] if posters.is_dir() and not posters.is_symlink() else []
    return {LABELS_FILE, INFO_FILE, *(f"{POSTERS_DIR}/{name}" for name in names)}


DEMO_OUTPUT = OutputKind("demo", DatasetError, "give a new or empty folder, or the folder of an earlier demo "
                         "dataset to replace it", marker=INFO_FILE, legacy=legacy_demo_files)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _rgb(values) -> RGB:
    """Clamped to 0-255 in plain Python: on three numbers NumPy's clip cost more than the drawing they colour."""
    r, g, b = (min(255, max(0, int(value))) for value in np.asarray(values).tolist())
    return (r, g, b)


def _gradient(sky: tuple[RGB, RGB], width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A vertical gradient: one column computed, widened by Pillow (a nearest-neighbour copy)."""
    top, bottom = (np.array(c, dtype=np.float32) + rng.integers(-20, 21, size=3) for c in sky)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None] ** rng.uniform(0.6, 1.6)
    column = np.clip(top * (1 - t) + bottom * t, 0, 255).astype(np.uint8)
    return Image.fromarray(column).resize((width, height), Image.Resampling.NEAREST)


# --- shared shapes -----------------------------------------------------------------------------


def _star_points(cx: float, cy: float, outer: float, inner: float, spikes: int,
                 rotation: float) -> list[tuple[float, float]]:
    steps = np.arange(2 * spikes)
    angles = rotation + steps * np.pi / spikes
    radii = np.where(steps % 2 == 0, outer, inner)
    return list(zip((cx + radii * np.cos(angles)).tolist(), (cy + radii * np.sin(angles)).tolist()))


def _circle(c: _Canvas, cx: float, cy: float, radius: float, **kwargs) -> None:
    c.draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), **kwargs)


def _figure(c: _Canvas, cx: float, base: float, scale: float, fill: RGB) -> None:
    """A head-and-shoulders silhouette standing on ``base``."""
    head = scale * 0.22
    _circle(c, cx, base - scale * 0.78, head, fill=fill)
    c.draw.rounded_rectangle((cx - scale * 0.45, base - scale * 0.52, cx + scale * 0.45, base + scale),
                             radius=scale * 0.2, fill=fill)


def _heart(c: _Canvas, cx: float, cy: float, size: float, fill: RGB) -> None:
    _circle(c, cx - size * 0.5, cy, size * 0.55, fill=fill)
    _circle(c, cx + size * 0.5, cy, size * 0.55, fill=fill)
    c.draw.polygon([(cx - size * 1.02, cy + size * 0.15), (cx + size * 1.02, cy + size * 0.15),
                    (cx, cy + size * 1.35)], fill=fill)


# --- genre motifs ------------------------------------------------------------------------------


def _action_motif(c: _Canvas, style: _Style) -> None:
    cx, cy = c.point((0.2, 0.8), (0.3, 0.7))
    outer = c.width * c.rng.uniform(0.3, 0.55)
    spikes, rotation = int(c.rng.integers(10, 18)), c.rng.uniform(0, np.pi)
    c.draw.polygon(_star_points(cx, cy, outer, outer * 0.45, spikes, rotation), fill=c.colour(style.accents))
    c.draw.polygon(_star_points(cx, cy, outer * 0.55, outer * 0.25, spikes, rotation + 0.2),
                   fill=(255, 230, 90))
    for _ in range(int(c.rng.integers(3, 7))):
        edge = c.point((0, 1), (0, 1))
        spread = c.rng.uniform(3, 9)
        c.draw.polygon([(edge[0] - spread, edge[1]), (edge[0] + spread, edge[1]), (cx, cy)],
                       fill=c.colour(((255, 255, 255), (255, 140, 0))))


def _comedy_motif(c: _Canvas, style: _Style) -> None:
    for _ in range(int(c.rng.integers(8, 18))):
        cx, cy = c.point((0, 1), (0.1, 0.85))
        _circle(c, cx, cy, c.width * c.rng.uniform(0.03, 0.14), fill=c.colour(style.accents))
    cx, cy = c.point((0.3, 0.7), (0.3, 0.6))
    radius = c.width * c.rng.uniform(0.18, 0.28)
    _circle(c, cx, cy, radius, fill=(255, 215, 0), outline=(40, 40, 40), width=3)
    c.draw.arc((cx - radius * 0.6, cy - radius * 0.5, cx + radius * 0.6, cy + radius * 0.6), 20, 160,
               fill=(40, 40, 40), width=3)


def _drama_motif(c: _Canvas, style: _Style) -> None:
    for _ in range(int(c.rng.integers(2, 5))):
        x, y = c.point((0.05, 0.85), (0.1, 0.5))
        c.draw.rectangle((x, y, x + c.width * 0.1, y + c.height * c.rng.uniform(0.1, 0.25)),
                         fill=c.colour(style.accents))
    cx = c.width * c.rng.uniform(0.3, 0.7)
    _figure(c, cx, c.height * c.rng.uniform(0.65, 0.8), c.width * c.rng.uniform(0.35, 0.5),
            c.colour(((35, 40, 50), (60, 65, 75))))


def _horror_motif(c: _Canvas, style: _Style) -> None:
    _circle(c, *c.point((0.15, 0.85), (0.1, 0.3)), c.width * c.rng.uniform(0.08, 0.16),
            fill=c.colour(((215, 215, 195),)))
    x = 0.0
    while x < c.width:
        step = c.rng.uniform(6, 18)
        c.draw.polygon([(x, 0), (x + step, 0), (x + step / 2, c.height * c.rng.uniform(0.05, 0.45))],
                       fill=c.colour(style.accents))
        x += step
    for _ in range(int(c.rng.integers(2, 5))):
        walk = np.cumsum(c.rng.normal(0, 8, size=(8, 2)), axis=0) + c.point((0, 1), (0.4, 0.9))
        c.draw.line([tuple(p) for p in walk.tolist()], fill=(10, 10, 10), width=2)


def _romance_motif(c: _Canvas, style: _Style) -> None:
    for _ in range(int(c.rng.integers(5, 12))):
        _circle(c, *c.point((0, 1), (0, 1)), c.width * c.rng.uniform(0.02, 0.06),
                fill=c.colour(((255, 230, 240), (255, 210, 225))))
    for _ in range(int(c.rng.integers(2, 6))):
        _heart(c, *c.point((0.15, 0.85), (0.2, 0.75)), c.width * c.rng.uniform(0.05, 0.16),
               c.colour(style.accents))


def _scifi_motif(c: _Canvas, style: _Style) -> None:
    horizon = c.height * c.rng.uniform(0.5, 0.7)
    vanish = c.width * c.rng.uniform(0.3, 0.7)
    line = c.colour(style.accents)
    for x in np.linspace(-c.width, 2 * c.width, int(c.rng.integers(9, 15))).tolist():
        c.draw.line([(vanish, horizon), (x, c.height)], fill=line, width=1)
    for t in np.linspace(0.05, 1, int(c.rng.integers(5, 9))).tolist():
        y = horizon + (c.height - horizon) * t * t
        c.draw.line([(0, y), (c.width, y)], fill=line, width=1)
    cx, cy = c.point((0.25, 0.75), (0.15, 0.4))
    radius = c.width * c.rng.uniform(0.1, 0.2)
    _circle(c, cx, cy, radius, fill=c.colour(((120, 60, 200), (40, 160, 200))))
    c.draw.ellipse((cx - radius * 1.8, cy - radius * 0.35, cx + radius * 1.8, cy + radius * 0.35),
                   outline=c.colour(style.accents), width=2)
    for _ in range(30):
        x, y = c.point((0, 1), (0, 0.5))
        c.draw.point((x, y), fill=(230, 240, 255))


def _animation_motif(c: _Canvas, style: _Style) -> None:
    for _ in range(int(c.rng.integers(2, 5))):
        x, y = c.point((0, 0.7), (0.2, 0.8))
        c.draw.ellipse((x, y, x + c.width * c.rng.uniform(0.2, 0.4), y + c.height * c.rng.uniform(0.1, 0.2)),
                       fill=c.colour(style.accents, jitter=10), outline=(0, 0, 0), width=3)
    for _ in range(int(c.rng.integers(4, 9))):
        cx, cy = c.point((0.05, 0.95), (0.05, 0.9))
        outer = c.width * c.rng.uniform(0.05, 0.12)
        c.draw.polygon(_star_points(cx, cy, outer, outer * 0.45, 5, c.rng.uniform(0, np.pi)),
                       fill=c.colour(style.accents, jitter=10), outline=(0, 0, 0), width=2)


def _western_motif(c: _Canvas, style: _Style) -> None:
    horizon = c.height * c.rng.uniform(0.55, 0.72)
    _circle(c, c.width * c.rng.uniform(0.2, 0.8), horizon, c.width * c.rng.uniform(0.15, 0.3),
            fill=c.colour(((255, 200, 90), (250, 170, 60))))
    left, right = sorted(c.rng.uniform(0, 1, size=2).tolist())
    top = horizon - c.height * c.rng.uniform(0.05, 0.15)
    ground = c.colour(style.accents)
    c.draw.polygon([(0, horizon), (c.width * left, horizon), (c.width * left + 8, top),
                    (c.width * right - 8, top), (c.width * right, horizon), (c.width, horizon),
                    (c.width, c.height), (0, c.height)], fill=ground)
    for _ in range(int(c.rng.integers(1, 4))):
        x, y = c.width * c.rng.uniform(0.05, 0.9), horizon + c.height * c.rng.uniform(0.05, 0.2)
        tall = c.height * c.rng.uniform(0.08, 0.16)
        cactus = c.colour(((60, 70, 30), (50, 35, 20)))
        c.draw.rectangle((x, y - tall, x + 5, y), fill=cactus)
        c.draw.rectangle((x - 6, y - tall * 0.6, x + 11, y - tall * 0.6 + 4), fill=cactus)


# --- textures ----------------------------------------------------------------------------------


GAUSSIAN_LEVELS = 1 << 16


@lru_cache(maxsize=1)
def _standard_normal_quantiles() -> np.ndarray:
    """The standard normal's quantiles at the midpoints of ``GAUSSIAN_LEVELS`` equal slices (to +-4.3),
    symmetric by construction."""
    inverse = NormalDist().inv_cdf
    lower = np.array([inverse((i + 0.5) / GAUSSIAN_LEVELS) for i in range(GAUSSIAN_LEVELS // 2)], dtype=np.float32)
    return np.concatenate([lower, -lower[::-1]])


@lru_cache(maxsize=16)
def _gaussian_quantiles(sigma: float) -> np.ndarray:
    return _standard_normal_quantiles() * np.float32(sigma)


def _picks(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, GAUSSIAN_LEVELS, size=shape, dtype=np.uint16)


def _grain(pixels: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Film grain: one Gaussian value per pixel (``sigma``) plus one per channel (``sigma / 3``).

    The values are quantiles picked by random 16-bit indices: Gaussian to the eye and to any statistic
    taken here, and several times cheaper than ``rng.normal``, which was half of the demo's generation.
    """
    luma = np.take(_gaussian_quantiles(sigma), _picks(rng, pixels.shape[:2] + (1,)))
    grain = np.take(_gaussian_quantiles(sigma / 3), _picks(rng, pixels.shape))
    grain += luma
    grain += pixels
    return grain


@lru_cache(maxsize=8)
def _vignette(height: int, width: int) -> np.ndarray:
    y, x = np.ogrid[-1:1:height * 1j, -1:1:width * 1j]
    return np.clip(1.15 - 0.75 * (x * x + y * y), 0.2, 1.0).astype(np.float32)[..., None]


def _light_texture(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _grain(pixels, rng, 4.0)


def _action_texture(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _grain((pixels - 128) * 1.25 + 128, rng, 8.0)


def _drama_texture(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    grey = pixels.mean(axis=2, keepdims=True)
    return _grain(pixels * 0.7 + grey * 0.3, rng, 6.0)


def _horror_texture(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _grain(pixels * _vignette(*pixels.shape[:2]), rng, 14.0)


def _scifi_texture(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    lines = pixels.copy()
    lines[int(rng.integers(3))::3] *= 0.72
    return _grain(lines, rng, 5.0)


def _western_texture(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    grey = pixels.mean(axis=2, keepdims=True)
    sepia = grey * np.array([1.07, 0.87, 0.62], dtype=np.float32)
    return _grain(pixels * 0.6 + sepia * 0.4, rng, 8.0)


# --- elements every poster has -----------------------------------------------------------------

_NEUTRALS: tuple[RGB, ...] = ((25, 25, 25), (200, 160, 130), (120, 100, 90), (225, 225, 225))


def _occluders(c: _Canvas) -> None:
    if c.rng.random() < OCCLUDER_P:
        for _ in range(int(c.rng.integers(1, 3))):
            _figure(c, c.width * c.rng.uniform(0.1, 0.9), c.height * c.rng.uniform(0.6, 0.95),
                    c.width * c.rng.uniform(0.25, 0.5), c.colour(_NEUTRALS))
    if c.rng.random() < PATCH_P:
        x, y = c.point((0, 0.7), (0, 0.8))
        c.draw.rectangle((x, y, x + c.width * c.rng.uniform(0.15, 0.4), y + c.height * c.rng.uniform(0.1, 0.25)),
                         fill=_rgb(c.rng.integers(0, 256, size=3)))


def _title_band(c: _Canvas, style: _Style) -> None:
    height = c.height * c.rng.uniform(0.1, 0.16)
    top = c.height * np.clip(style.band_at + c.rng.uniform(-0.04, 0.04), 0.02, 0.9) - height / 2
    band = c.colour((style.band,))
    c.draw.rectangle((0, top, c.width, top + height), fill=band)
    ink = (20, 20, 20) if sum(band) > 380 else (245, 245, 235)
    x, glyph = c.width * c.rng.uniform(0.05, 0.15), height * 0.5
    while x < c.width * 0.9:
        if c.rng.random() < 0.15:
            x += glyph * 0.6
            continue
        wide = glyph * c.rng.uniform(0.4, 0.8)
        c.draw.rectangle((x, top + height * 0.25, x + wide, top + height * 0.25 + glyph), fill=ink)
        x += wide + glyph * 0.2


def _credits(c: _Canvas) -> None:
    for row in range(3):
        y = c.height * (0.955 + row * 0.013)
        x = c.width * c.rng.uniform(0.1, 0.2)
        while x < c.width * 0.85:
            dash = c.rng.uniform(3, 12)
            c.draw.line([(x, y), (x + dash, y)], fill=(170, 170, 170), width=1)
            x += dash + 2


_STYLES: dict[str, _Style] = {
    "Action": _Style(((15, 15, 15), (200, 80, 10)), ((255, 120, 0), (240, 60, 20), (255, 170, 0)),
                     (10, 10, 10), 0.85, _action_motif, _action_texture),
    "Comedy": _Style(((255, 235, 80), (255, 250, 215)), ((230, 40, 40), (40, 90, 230), (255, 255, 255)),
                     (220, 30, 30), 0.1, _comedy_motif, _light_texture),
    "Drama": _Style(((90, 105, 125), (160, 170, 180)), ((190, 195, 200), (130, 140, 155)),
                    (70, 80, 95), 0.9, _drama_motif, _drama_texture),
    "Horror": _Style(((5, 5, 8), (70, 0, 0)), ((120, 0, 0), (90, 5, 5)),
                     (140, 0, 0), 0.15, _horror_motif, _horror_texture),
    "Romance": _Style(((255, 190, 210), (250, 140, 170)), ((230, 30, 80), (200, 0, 60), (255, 255, 255)),
                      (255, 245, 250), 0.55, _romance_motif, _light_texture),
    "Sci-Fi": _Style(((5, 10, 40), (20, 40, 90)), ((0, 240, 255), (255, 0, 200)),
                     (0, 200, 230), 0.08, _scifi_motif, _scifi_texture),
    "Animation": _Style(((60, 170, 255), (120, 230, 120)),
                        ((255, 40, 40), (255, 220, 0), (40, 200, 60), (160, 60, 255)),
                        (255, 140, 0), 0.3, _animation_motif, _light_texture),
    "Western": _Style(((240, 170, 80), (150, 80, 30)), ((90, 50, 25), (70, 40, 20)),
                      (110, 60, 25), 0.12, _western_motif, _western_texture),
}
