"""A second, independent shapes generator: the held-out scenes of the shapes demos, never trained on.

A model scored only on scenes from its own generator is scored on that generator's habits. This one was written
separately from :mod:`.shapes` (the training generator) and shares none of its drawing code: it rasterises the
shapes itself with NumPy (each pixel's coverage from 4×4 sub-samples of point-in-shape tests), where the training
generator uses PIL's ``ImageDraw``; it uses none of the training backgrounds (the training's third stage puts
some scenes on photographs, but other pictures than :data:`TEXTURES`; its fourth puts flat polygons behind the
shapes, the nearest thing to the mosaics and regions here, but separate polygons, not a tiling or half-planes);
and it chooses sizes, colours, styles and degradations its own way:

* **scenes** at their own sizes, 96–400 pixels a side, any aspect from 3:5 to 5:3 (the service resizes them to
  the model's input, as it does an upload); the truth is in the scene's own pixels;
* **backgrounds** the training never shows: crops of real textures from ``skimage.data`` (grass, gravel, brick,
  the moon, printed text, a cat's fur, a microscope slide, deep sky; pictures the training never sees), tinted;
  Voronoi mosaics; fractal (1/f) noise; concentric ripples; a few flat regions with straight hard edges; grainy
  paper with a vignette;
* **shapes**: circles, squares at any rotation, triangles from three random inner angles (each ≥ 25°); 10–40 %
  of the scene's shorter side across; colours from HSV (pastel to saturated, dark to light), some with little
  contrast; solid, outlined (the mask is the stroke), solid with a dark rim, translucent, or with a drop shadow
  (the shadow is not the shape); apart, touching, overlapping (at least 65 % of each stays visible) or cut by the
  edge of the scene;
* **degradations**: a box or motion blur, Gaussian, signal-dependent (shot) or salt-and-pepper noise, a colour
  cast, and JPEG or WebP compression at qualities down to 15.

``make_held_out(n, seed=HELD_OUT_SEED)`` is the README's held-out set. ``make_simple_held_out`` is a second, plain
one, the kind of scene issue 19 reports the first demos failing on: a linear gradient between two random colours,
2–5 apart shapes 28–64 pixels across in random RGB colours (at least 60 from the background under them, so
every shape can be seen), Gaussian blur and Gaussian noise, each scene 128–320 pixels a side. For both sets the
samples are :class:`.shapes.ShapesSample` (only the container and ``resize_sample``, the service's view of an
upload, are shared). ``yolo_shapes.evaluate_held_out`` and ``unet_shapes.evaluate_held_out`` score a model on it.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

from .shapes import HELD_OUT_SEED, ShapesSample, resize_sample

__all__ = ["TEXTURES", "make_held_out", "held_out_scene", "make_simple_held_out", "simple_scene", "resize_sample"]

# skimage.data images with no circle, square or triangle of their own in the crops taken (no coins, clock, cup).
TEXTURES = ("grass", "gravel", "brick", "moon", "text", "page", "chelsea", "immunohistochemistry", "hubble_deep_field")
VISIBLE = 0.65
_SUB = 4  # sub-samples per pixel side for coverage


# --- backgrounds ---------------------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, h: int, w: int, cache: dict) -> np.ndarray:
    import skimage.data

    name = str(rng.choice(TEXTURES))
    if name not in cache:
        cache[name] = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    src = cache[name]
    if src.ndim == 2:
        src = np.repeat(src[..., None], 3, axis=2)
    zoom = rng.uniform(0.5, 1.5)
    ch, cw = min(src.shape[0], max(8, int(h * zoom))), min(src.shape[1], max(8, int(w * zoom)))
    y, x = int(rng.integers(0, src.shape[0] - ch + 1)), int(rng.integers(0, src.shape[1] - cw + 1))
    crop = Image.fromarray(src[y : y + ch, x : x + cw].astype(np.uint8)).resize((w, h), Image.Resampling.LANCZOS)
    out = np.asarray(crop, dtype=np.float32)
    tint = rng.uniform(0.4, 1.3, size=3)
    return np.clip(out * tint * rng.uniform(0.5, 1.0) + rng.uniform(0, 90), 0, 255)


def _voronoi(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    k = int(rng.integers(4, 30))
    seeds = np.stack([rng.uniform(0, h, k), rng.uniform(0, w, k)], 1)
    yy, xx = np.mgrid[0:h, 0:w]
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    centre = rng.uniform(30, 220, 3)
    colours = np.clip(centre + rng.normal(0, rng.uniform(8, 35), size=(k, 3)), 0, 255)
    return colours[d.argmin(-1)].astype(np.float32)


def _fractal(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """1/f noise made in the frequency domain, one field per channel."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = 1.0
    beta = rng.uniform(1.2, 2.4)
    out = np.empty((h, w, 3), dtype=np.float32)
    for c in range(3):
        spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (beta / 2)
        field = np.fft.irfft2(spectrum, s=(h, w))
        out[..., c] = (field - field.mean()) / (field.std() + 1e-9)
    mix = rng.uniform(0.2, 1.0, size=(3, 3))  # correlated channels: earthy, not rainbow
    return np.clip(out @ mix * rng.uniform(15, 45) + rng.uniform(40, 210, 3), 0, 255)


def _ripples(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.hypot(yy - rng.uniform(-h, 2 * h), xx - rng.uniform(-w, 2 * w))
    wave = 0.5 + 0.5 * np.cos(d * rng.uniform(0.08, 0.6))
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return (a * wave[..., None] + b * (1 - wave[..., None])).astype(np.float32)


def _regions(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Two to four flat regions cut by straight lines: hard edges that are not shapes."""
    out = np.broadcast_to(rng.uniform(0, 255, 3), (h, w, 3)).astype(np.float32).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):
        a = rng.uniform(0, 2 * np.pi)
        side = (xx - rng.uniform(0, w)) * np.cos(a) + (yy - rng.uniform(0, h)) * np.sin(a) > 0
        out[side] = rng.uniform(0, 255, 3)
    return out


def _paper(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = 1 - rng.uniform(0.1, 0.5) * (((yy / h - 0.5) ** 2 + (xx / w - 0.5) ** 2) * 2)
    tone = rng.uniform(190, 250) * np.array([1.0, rng.uniform(0.93, 1.0), rng.uniform(0.8, 1.0)])
    grain = rng.normal(0, rng.uniform(2, 9), size=(h, w, 1))
    return np.clip(tone * vignette[..., None] + grain, 0, 255).astype(np.float32)


def _backdrop(rng: np.random.Generator, h: int, w: int, cache: dict) -> np.ndarray:
    kind = int(rng.integers(0, 6))
    if kind == 0:
        return _texture(rng, h, w, cache)
    return (_voronoi, _fractal, _ripples, _regions, _paper)[kind - 1](rng, h, w)


# --- shapes, rasterised here ---------------------------------------------------------------------------------------


def _vertices(kind: int, rng: np.random.Generator, radius: float) -> np.ndarray | None:
    """Polygon vertices around (0, 0), or None for a circle. Triangles: three inner angles ≥ 25°, inscribed in a
    circle of ``radius`` (the law of sines places them), then turned."""
    turn = rng.uniform(0, 2 * np.pi)
    if kind == 1:
        return None
    if kind == 2:
        angles = turn + np.arange(4) * np.pi / 2
    else:
        while True:
            inner = rng.dirichlet([2.0, 2.0, 2.0]) * np.pi
            if inner.min() >= np.radians(25):
                break
        # A chord opposite inner angle A subtends 2A at the centre: vertices at cumulative central angles.
        angles = turn + np.concatenate([[0.0], np.cumsum(2 * inner[:2])])
    return radius * np.stack([np.cos(angles), np.sin(angles)], 1)


def _coverage(kind: int, verts: np.ndarray | None, radius: float, cx: float, cy: float, h: int, w: int) -> np.ndarray:
    """Fraction of each pixel inside the shape (filled), from _SUB×_SUB sub-samples; zero outside its bounds."""
    cov = np.zeros((h, w), dtype=np.float32)
    x0, x1 = max(0, int(cx - radius) - 1), min(w, int(cx + radius) + 2)
    y0, y1 = max(0, int(cy - radius) - 1), min(h, int(cy + radius) + 2)
    if x0 >= x1 or y0 >= y1:
        return cov
    offsets = (np.arange(_SUB) + 0.5) / _SUB
    ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1) - cy
    xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1) - cx
    py, px = np.meshgrid(ys, xs, indexing="ij")
    if verts is None:
        inside = px**2 + py**2 <= radius**2
    else:
        inside = np.ones_like(px, dtype=bool)
        n = len(verts)
        (ax, ay), (bx, by) = verts[1] - verts[0], verts[2] - verts[1]
        orient = np.sign(ax * by - ay * bx)  # which side of each edge is inside
        for i in range(n):
            a, b = verts[i], verts[(i + 1) % n]
            inside &= orient * ((b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0])) >= 0
    block = inside.reshape(y1 - y0, _SUB, x1 - x0, _SUB).mean(axis=(1, 3))
    cov[y0:y1, x0:x1] = block
    return cov


def _hsv(rng: np.random.Generator) -> np.ndarray:
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.15, 1.0), rng.uniform(0.15, 1.0)
    i, f = int(hue * 6) % 6, hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return np.array(rgb) * 255


def _shape_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    luma = np.array([0.2126, 0.7152, 0.0722])
    low_contrast = rng.random() < 0.2
    for _ in range(60):
        colour = _hsv(rng)
        diff = np.abs(colour - under)
        if low_contrast and diff.max() >= 18 and abs(float((colour - under) @ luma)) >= 10:
            return colour
        if not low_contrast and diff.max() >= 60:
            return colour
    return np.where(under > 127, 20.0, 235.0)


def _blur(image: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    pad = len(kernel) // 2
    widths = [(0, 0)] * image.ndim
    widths[axis] = (pad, pad)
    padded = np.pad(image, widths, mode="edge")
    out = np.zeros_like(image)
    for i, k in enumerate(kernel):
        out += k * np.take(padded, range(i, i + image.shape[axis]), axis=axis)
    return out


def held_out_scene(rng: np.random.Generator, cache: dict | None = None) -> ShapesSample:
    """One held-out scene at its own size."""
    cache = {} if cache is None else cache
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.67))))
    side = float(rng.uniform(96, 400))
    h, w = max(64, int(side / np.sqrt(aspect))), max(64, int(side * np.sqrt(aspect)))
    short = min(h, w)
    image = _backdrop(rng, h, w, cache)
    mask = np.zeros((h, w), dtype=np.uint8)
    owner = np.full((h, w), -1, dtype=np.int16)
    overlapping = rng.random() < 0.3
    kinds: list[int] = []
    areas: list[int] = []
    for _ in range(int(rng.integers(1, 8))):
        for _attempt in range(25):
            kind = int(rng.integers(1, 4))
            radius = rng.uniform(0.05, 0.2) * short
            cx, cy = rng.uniform(-0.3 * radius, w + 0.3 * radius), rng.uniform(-0.3 * radius, h + 0.3 * radius)
            verts = _vertices(kind, rng, radius)
            full = _coverage(kind, verts, radius, cx, cy, h, w)
            style = str(rng.choice(["solid", "solid", "solid", "outline", "rim", "translucent", "shadow"]))
            if style == "outline":
                thickness = rng.uniform(0.08, 0.25)
                inner_verts = None if verts is None else verts * (1 - thickness)
                cover = np.clip(full - _coverage(kind, inner_verts, radius * (1 - thickness), cx, cy, h, w), 0, 1)
            else:
                cover = full
            drawn = cover >= 0.5
            expected = (np.pi * radius**2 if verts is None else _polygon_area(verts)) * (
                1 - (1 - thickness) ** 2 if style == "outline" else 1
            )
            if drawn.sum() < 8 or drawn.sum() < VISIBLE * expected:
                continue  # cut too much by the scene's edge
            hidden = [int(((owner == j) & drawn).sum()) for j in range(len(kinds))]
            if not overlapping and any(hidden):
                continue
            if any(areas[j] - hidden[j] < VISIBLE * areas[j] for j in range(len(kinds))):
                continue
            break
        else:
            continue
        under = image[np.clip(int(cy), 0, h - 1), np.clip(int(cx), 0, w - 1)]
        colour = _shape_colour(rng, under)
        alpha = cover[..., None]
        if style == "shadow":
            dx, dy = (int(v) for v in rng.integers(2, max(3, int(radius * 0.25)), size=2))
            shade = np.roll(np.roll(full, dy, 0), dx, 1)[..., None] * rng.uniform(0.3, 0.6)
            shade = _blur(_blur(shade, np.ones(5) / 5, 0), np.ones(5) / 5, 1)
            image = image * (1 - shade)
        if style == "translucent":
            alpha = alpha * rng.uniform(0.6, 0.85)
        paint = np.broadcast_to(colour, image.shape)
        if style == "rim":
            rim = np.clip(
                full - _coverage(kind, None if verts is None else verts * 0.88, radius * 0.88, cx, cy, h, w), 0, 1
            )
            paint = paint * (1 - rim[..., None]) + colour * 0.25 * rim[..., None]
        image = image * (1 - alpha) + paint * alpha
        owner[drawn] = len(kinds)
        mask[drawn] = kind
        kinds.append(kind)
        areas.append(int(drawn.sum()))
    image = _degrade(rng, image)
    boxes, labels = [], []
    for j, kind in enumerate(kinds):
        ys, xs = np.nonzero(owner == j)
        if len(xs):
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(kind)
    return ShapesSample(
        image=image,
        mask=mask,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
    )


def _polygon_area(verts: np.ndarray) -> float:
    x, y = verts[:, 0], verts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _degrade(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    if rng.random() < 0.4:
        n = int(rng.integers(2, 5))
        if rng.random() < 0.5:  # box blur
            image = _blur(_blur(image, np.ones(n) / n, 0), np.ones(n) / n, 1)
        else:  # motion blur along one axis
            image = _blur(image, np.ones(n + 2) / (n + 2), int(rng.integers(0, 2)))
    if rng.random() < 0.3:
        image = image * rng.uniform(0.8, 1.2, size=3)  # colour cast
    noise = rng.integers(0, 4)
    if noise == 1:
        image = image + rng.normal(0, rng.uniform(3, 20), size=image.shape)
    elif noise == 2:  # shot noise: brighter pixels vary more
        image = image + rng.normal(size=image.shape) * np.sqrt(np.clip(image, 0, 255)) * rng.uniform(0.3, 1.2)
    elif noise == 3:
        flip = rng.random(image.shape[:2]) < rng.uniform(0.002, 0.02)
        image = image.copy()
        image[flip] = rng.choice([0.0, 255.0], size=(int(flip.sum()), 1))
    out = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    codec = rng.integers(0, 3)
    if codec:
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG" if codec == 1 else "WEBP", quality=int(rng.integers(15, 91)))
        out = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(out, dtype=np.uint8)


def make_held_out(n: int, *, seed: int = HELD_OUT_SEED) -> list[ShapesSample]:
    """``n`` held-out scenes, each at its own size (``resize_sample`` brings one to the model's input size).

    Scene ``i`` comes from its own generator seeded ``(seed, i)``. Made once per process for each (n, seed): the
    evaluations and the tests score the same set. The arrays are shared: do not write to them."""
    return list(_held_out(n, seed))


@functools.lru_cache(maxsize=4)
def _held_out(n: int, seed: int) -> tuple[ShapesSample, ...]:
    textures: dict = {}
    return tuple(held_out_scene(np.random.default_rng((seed, i)), textures) for i in range(n))


def simple_scene(rng: np.random.Generator) -> ShapesSample:
    """One scene of the plain held-out set (see the module docstring)."""
    from PIL import ImageFilter

    h, w = (int(v) for v in rng.integers(128, 321, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(a) + yy * np.sin(a)
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[..., None]
    image = rng.uniform(0, 255, 3) * (1 - t) + rng.uniform(0, 255, 3) * t
    mask = np.zeros((h, w), dtype=np.uint8)
    placed: list[tuple[float, float, float]] = []
    boxes, labels = [], []
    for _ in range(int(rng.integers(2, 6))):
        for _attempt in range(30):
            radius = rng.uniform(28, 64) / 2
            cx, cy = rng.uniform(radius + 1, w - radius - 1), rng.uniform(radius + 1, h - radius - 1)
            if all(np.hypot(cx - px, cy - py) > radius + pr + 3 for px, py, pr in placed):
                break
        else:
            continue
        kind = int(rng.integers(1, 4))
        cover = _coverage(kind, _vertices(kind, rng, radius), radius, cx, cy, h, w)
        under = image[int(cy), int(cx)]
        while True:
            colour = rng.uniform(0, 255, 3)
            if np.linalg.norm(colour - under) >= 60:
                break
        image = image * (1 - cover[..., None]) + colour * cover[..., None]
        drawn = cover >= 0.5
        mask[drawn] = kind
        ys, xs = np.nonzero(drawn)
        placed.append((cx, cy, radius))
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(kind)
    out = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
    noisy = np.asarray(out, dtype=np.float32) + rng.normal(0, rng.uniform(4, 15), size=(h, w, 3))
    return ShapesSample(
        image=np.clip(noisy, 0, 255).astype(np.uint8),
        mask=mask,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
    )


@functools.lru_cache(maxsize=4)
def _simple(n: int, seed: int) -> tuple[ShapesSample, ...]:
    return tuple(simple_scene(np.random.default_rng((seed, i, 1))) for i in range(n))


def make_simple_held_out(n: int, *, seed: int = HELD_OUT_SEED) -> list[ShapesSample]:
    """``n`` scenes of the plain held-out set; scene ``i`` from its own generator seeded ``(seed, i, 1)`` (never
    the same stream as :func:`make_held_out`'s). Cached per process like it: do not write to the arrays."""
    return list(_simple(n, seed))
