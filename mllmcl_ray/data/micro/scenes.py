"""Images of the micro world: scene sampling and deterministic rendering.

Every image is described by a small JSON-able dict (a *scene*) and rendered from it by
:func:`render`; the world writes the scenes to ``vl/scenes.jsonl`` so any image can be
re-rendered (and its object masks recovered) exactly. Kinds:

- ``scene``: 1-3 objects (circle / square / triangle / cross in seven named colours) on a
  plain dark-grey background, laid out left/right, top/bottom, or in a row of three with a
  centre; objects in 1-2 object scenes are ``small`` or ``large``. Used by the ``caption``,
  ``instruct``, ``vqa`` and ``grounding`` tasks.
- ``shape``: one object of six classes (adds diamond and star) in any RGB colour, any size
  and place, slightly rotated, on a random gradient with pixel noise (CIFAR-like).
- ``ocr``: a word drawn with PIL's built-in bitmap font (integer-scaled for larger images),
  dark on light or light on dark, at a random offset.
- ``digit``: one of scikit-learn's ``load_digits()`` 8x8 images, bilinearly upscaled,
  grey to RGB.

Shapes are drawn 4x supersampled and box-downsampled (anti-aliased edges); a pixel belongs
to an object when its mask value is > 0, and bounding boxes are computed from the masks.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import vocab as V
from .rand import Rand

SUPERSAMPLE = 4
_BG_GREY = (16, 72)

# (fx, fy) centre of each position, by number of objects in the scene
_CENTERS = {
    1: {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73),
        "center": (0.5, 0.5)},
    2: {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)},
    3: {"left": (0.18, 0.5), "center": (0.5, 0.5), "right": (0.82, 0.5),
        "top": (0.5, 0.18), "bottom": (0.5, 0.82)},
}
_LAYOUTS = {
    1: (("left",), ("right",), ("top",), ("bottom",), ("center",)),
    2: (("left", "right"), ("top", "bottom")),
    3: (("left", "center", "right"), ("top", "center", "bottom")),
}
# radius in units of image_size / 32
_RADIUS = {1: {"small": 4.5, "large": 7.0}, 2: {"small": 4.0, "large": 6.5}, 3: {None: 3.6}}
_JITTER = {1: (1.5, 1.5), 2: (1.0, 1.0), 3: (0.6, 1.5)}  # (along the row, across it)


# ------------------------------------------------------------------------------- sampling
def sample_scene(rnd: Rand, size: int, n_objects: int | None = None) -> dict:
    u = size / 32.0
    n = n_objects or rnd.choose((1, 2, 3), (0.3, 0.4, 0.3))
    layout = rnd.pick(_LAYOUTS[n])
    horizontal = n == 1 or layout[0] == "left"
    grey = rnd.integers(_BG_GREY[0], _BG_GREY[1] + 1)
    pairs = rnd.pick_k([(c, s) for c in V.VL_COLORS for s in V.SCENE_SHAPES], n)
    objects = []
    along, across = _JITTER[n]
    for pos, (color, shape) in zip(layout, pairs):
        size_word = None if n == 3 else ("small" if rnd.coin(0.5) else "large")
        fx, fy = _CENTERS[n][pos]
        jx, jy = (along, across) if horizontal else (across, along)
        cx = fx * size + rnd.uniform(-jx, jx) * u
        cy = fy * size + rnd.uniform(-jy, jy) * u
        r = _RADIUS[n][size_word] * u
        base = V.COLOR_RGB[color]
        rgb = [int(min(255, max(0, c + rnd.integers(-12, 13)))) for c in base]
        objects.append({
            "shape": shape, "color": color, "rgb": rgb, "size": size_word, "position": pos,
            "cx": round(cx, 2), "cy": round(cy, 2), "r": round(r, 2), "angle": 0.0,
        })
    return {"kind": "scene", "size": size, "background": [grey, grey, grey], "objects": objects}


def _luminance(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def sample_shape_image(rnd: Rand, size: int, shape: str) -> dict:
    u = size / 32.0
    c0 = [rnd.integers(0, 256) for _ in range(3)]
    c1 = [int(min(255, max(0, c + rnd.integers(-60, 61)))) for c in c0]
    bg_mean = [(a + b) / 2 for a, b in zip(c0, c1)]
    while True:
        rgb = [rnd.integers(0, 256) for _ in range(3)]
        if abs(_luminance(rgb) - _luminance(bg_mean)) >= 70:
            break
    r = rnd.uniform(6.0, 11.0) * u
    cx = rnd.uniform(r + 1, size - r - 1)
    cy = rnd.uniform(r + 1, size - r - 1)
    obj = {"shape": shape, "color": None, "rgb": rgb, "size": None, "position": None,
           "cx": round(cx, 2), "cy": round(cy, 2), "r": round(r, 2),
           "angle": round(rnd.uniform(-15.0, 15.0), 1) if shape != "circle" else 0.0}
    return {"kind": "shape", "size": size, "background": c0, "background2": c1,
            "gradient_angle": round(rnd.uniform(0.0, 360.0), 1),
            "noise_sigma": 6.0, "noise_offset": [rnd.integers(0, _NOISE_BANK), rnd.integers(0, _NOISE_BANK)],
            "objects": [obj]}


def sample_ocr_image(rnd: Rand, size: int, word: str) -> dict:
    scale = max(1, size // 32)
    ink = _text_ink_box(word)
    w, h = (ink[2] - ink[0]) * scale, (ink[3] - ink[1]) * scale
    if w > size or h > size:
        raise ValueError(f"word {word!r} does not fit a {size}px image")
    light = [rnd.integers(175, 256) for _ in range(3)]
    dark = [rnd.integers(0, 80) for _ in range(3)]
    fg, bg = (dark, light) if rnd.coin(0.75) else (light, dark)
    x = rnd.integers(0, size - w + 1)
    y = rnd.integers(0, size - h + 1)
    return {"kind": "ocr", "size": size, "word": word, "scale": scale, "x": x, "y": y,
            "fg": fg, "background": bg}


# ------------------------------------------------------------------------------ rendering
def _rotate(points, cx, cy, angle_deg):
    if not angle_deg:
        return [(cx + x, cy + y) for x, y in points]
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]


def _polygons(shape: str, r: float) -> list[list[tuple[float, float]]]:
    """Polygons (relative to the centre) whose union is the shape; [] for a circle."""
    if shape == "square":
        h = 0.85 * r
        return [[(-h, -h), (h, -h), (h, h), (-h, h)]]
    if shape == "triangle":
        pts = [(r * math.cos(math.radians(a)), r * math.sin(math.radians(a)) + 0.15 * r)
               for a in (-90, 30, 150)]
        return [pts]
    if shape == "cross":
        w = 0.33 * r
        return [[(-r, -w), (r, -w), (r, w), (-r, w)], [(-w, -r), (w, -r), (w, r), (-w, r)]]
    if shape == "diamond":
        return [[(0, -r), (0.7 * r, 0), (0, r), (-0.7 * r, 0)]]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = math.radians(-90 + 36 * k)
            pts.append((rad * math.cos(a), rad * math.sin(a) + 0.05 * r))
        return [pts]
    if shape == "circle":
        return []
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(obj: dict, size: int) -> np.ndarray:
    """Anti-aliased coverage mask (uint8 0..255, size x size) of one object.

    Drawn SUPERSAMPLE x larger on a canvas covering just the object's pixel neighbourhood
    (whole pixels, so box-downsampling stays aligned with the image grid), then pasted."""
    F = SUPERSAMPLE
    cx, cy, r = obj["cx"], obj["cy"], obj["r"]
    x0, y0 = max(0, math.floor(cx - r) - 1), max(0, math.floor(cy - r) - 1)
    x1, y1 = min(size, math.ceil(cx + r) + 2), min(size, math.ceil(cy + r) + 2)
    canvas = Image.new("L", ((x1 - x0) * F, (y1 - y0) * F), 0)
    draw = ImageDraw.Draw(canvas)
    ccx, ccy, rr = (cx - x0) * F, (cy - y0) * F, r * F
    if obj["shape"] == "circle":
        rc = 0.95 * rr
        draw.ellipse([ccx - rc, ccy - rc, ccx + rc, ccy + rc], fill=255)
    else:
        for poly in _polygons(obj["shape"], rr):
            draw.polygon(_rotate(poly, ccx, ccy, obj.get("angle", 0.0)), fill=255)
    small = np.frombuffer(canvas.reduce(F).tobytes(), np.uint8).reshape(y1 - y0, x1 - x0)
    mask = np.zeros((size, size), np.uint8)
    mask[y0:y1, x0:x1] = small
    return mask


_NOISE_BANK = 256  # noise crops start anywhere in a fixed (256 + S)^2 bank of N(0, 1) pixels


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed texture of standard normal noise (constant seed: part of the renderer)."""
    n = _NOISE_BANK + size
    return np.random.default_rng(20261122).standard_normal((n, n, 3))


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    return ys, xs


def _background(scene: dict) -> np.ndarray:
    S = scene["size"]
    bg = np.empty((S, S, 3), np.float64)
    bg[:] = np.asarray(scene["background"], np.float64)
    if "background2" in scene:
        a = math.radians(scene["gradient_angle"])
        ys, xs = _grid(S)
        t = (xs - 0.5) * math.cos(a) + (ys - 0.5) * math.sin(a)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        bg = bg * (1 - t[..., None]) + np.asarray(scene["background2"], np.float64) * t[..., None]
    return bg


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default_imagefont()


@functools.lru_cache(maxsize=256)
def _text_bitmap(word: str) -> np.ndarray:
    font = _font()
    _, _, w, h = font.getbbox(word)
    canvas = Image.new("L", (w + 2, h + 2), 0)
    ImageDraw.Draw(canvas).text((0, 0), word, font=font, fill=255)
    return np.asarray(canvas)


@functools.lru_cache(maxsize=256)
def _text_ink_box(word: str) -> tuple[int, int, int, int]:
    m = _text_bitmap(word)
    ys, xs = np.nonzero(m)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def render(scene: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """(H x W x 3 uint8 image, per-object masks) for a scene dict (digits: no masks)."""
    kind = scene["kind"]
    S = scene["size"]
    if kind == "digit":
        return render_digit(scene["index"], S), []
    if kind == "ocr":
        x0, y0, x1, y1 = _text_ink_box(scene["word"])
        ink = _text_bitmap(scene["word"])[y0:y1, x0:x1]
        s = scene["scale"]
        if s > 1:
            ink = np.kron(ink, np.ones((s, s), np.uint8))
        mask = np.zeros((S, S), np.uint8)
        mask[scene["y"]:scene["y"] + ink.shape[0], scene["x"]:scene["x"] + ink.shape[1]] = ink
        img = np.empty((S, S, 3), np.uint8)
        img[:] = np.asarray(scene["background"], np.uint8)
        img[mask > 0] = np.asarray(scene["fg"], np.uint8)
        return img, [mask]
    img = _background(scene)
    masks = []
    for obj in scene["objects"]:
        m = shape_mask(obj, S)
        x0, y0, x1, y1 = pixel_bbox(m)
        a = m[y0:y1, x0:x1].astype(np.float64)[..., None] / 255.0
        region = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = region * (1 - a) + np.asarray(obj["rgb"], np.float64) * a
        masks.append(m)
    if scene.get("noise_sigma"):
        ox, oy = scene["noise_offset"]
        noise = _noise_bank(S)[oy:oy + S, ox:ox + S]
        img = np.clip(img + scene["noise_sigma"] * noise, 0, 255)
    return np.rint(img).astype(np.uint8), masks  # a convex mix of 0..255 values: no clip needed


# ------------------------------------------------------------------------------- geometry
def pixel_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) with x1/y1 exclusive, over pixels where mask > 0."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


# Grounding boxes carry BOX_DECIMALS decimals (LLaVA writes 2 for RefCOCO). The micro world
# uses 1: a ~1M-parameter model does not learn two-decimal boxes of 4-7 px objects in a
# 32 px image to IoU > 0.5 within the micro budget (README, micro run).
BOX_DECIMALS = 1


def normalized_bbox(px: tuple[int, int, int, int], size: int,
                    decimals: int = BOX_DECIMALS) -> list[float]:
    """Pixel box -> [x1, y1, x2, y2] in [0, 1] with `decimals` decimals, rounded outward."""
    x0, y0, x1, y1 = px
    q = 10 ** decimals
    lo = lambda v: (v * q // size) / q  # noqa: E731
    hi = lambda v: (-(-v * q // size)) / q  # noqa: E731
    return [lo(x0), lo(y0), hi(x1), hi(y1)]


def format_bbox(b: list[float], decimals: int = BOX_DECIMALS) -> str:
    return "[" + ", ".join(f"{v:.{decimals}f}" for v in b) + "]"


# --------------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float in 0..16, labels) — the data of sklearn's load_digits().

    Read straight from scikit-learn's packaged ``digits.csv.gz`` (the file load_digits
    parses) to avoid importing sklearn (~1.4 s); falls back to load_digits()."""
    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if path is not None and path.is_file():
        with gzip.open(path, "rb") as f:
            data = np.loadtxt(f, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # pragma: no cover

    d = load_digits()  # pragma: no cover
    return d.images, d.target.astype(np.int64)  # pragma: no cover


def render_digit(index: int, size: int) -> np.ndarray:
    images, _ = digits_data()
    g = np.rint(images[index] * (255.0 / 16.0)).astype(np.uint8)
    im = Image.fromarray(g, "L").resize((size, size), Image.BILINEAR)
    return np.repeat(np.asarray(im)[..., None], 3, axis=2)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(img: np.ndarray) -> bytes:
    """A minimal RGB8 PNG (filter 0, zlib level 6): ~8x faster than PIL for tiny images,
    deterministic, readable by any PNG decoder."""
    h, w, c = img.shape
    if c != 3 or img.dtype != np.uint8:
        raise ValueError("expected an H x W x 3 uint8 array")
    raw = np.zeros((h, 1 + w * 3), np.uint8)
    raw[:, 1:] = img.reshape(h, w * 3)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _png_chunk(b"IEND", b""))
