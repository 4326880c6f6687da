"""The randomised training generator of the shapes demos, with a difficulty ``level`` for a curriculum.

The classic generator (:mod:`.shapes`) draws one tidy kind of scene, and models trained on it learn that kind, not
the shapes (held-out mean IoU 0.40 against 0.98 in-domain). This one randomises every choice a person makes when
drawing a shapes scene, each within a range that widens with ``level`` (0 = close to the classic scenes, 1 = the
whole range, easy cases included), so training can start where the shipped weights are and end on the hard cases:

* **canvas**: drawn at its own size (0.8× up to 2.5× the output) and aspect (up to 16:9), then resized to the
  output the way the service resizes an upload (PIL bilinear), so circles and squares arrive squashed as they will
  over HTTP;
* **backgrounds**: flat, linear or radial gradients, blotches (smoothly upsampled random colour grids, one to three
  octaves), sine waves, stripes, checkerboards, speckle; clutter that is not a shape (lines, arcs, specks) and
  distractors that are not one of the classes (crosses, five-pointed stars, long bars); and, where a caller asks
  for them, crops of photographs (:data:`PHOTOS`; ``photos``, the third training stage) and flat polygons of five
  to seven corners, up to twice the scene's shorter side, often cut by its border (``patches``, the fourth);
* **shapes**: circles; squares at any rotation; equilateral, isosceles, right and scalene triangles at any rotation
  (no angle under 20°); 8 output pixels across up to 56 % of the shorter side; filled, outlined (the mask is the
  stroke), filled with a border, shaded with a gradient or filled with noise; uniform RGB colours, contrast against
  their own surroundings down to 25 (RGB distance); where a caller asks for them (``faint``, the eighth stage), a
  share drawn hard to see on purpose (:data:`FAINT`: 25–60 from their surroundings, half outlined with thin
  strokes); touching, overlapping or cut by the border, always with at least 60 % of each in sight;
* **rendering**: hard or anti-aliased edges, brightness / contrast / gamma, grey scenes, Gaussian blur, Gaussian
  noise and JPEG down to quality 20.

It shares no code with the held-out generator (:mod:`.shapes_heldout`), whose backgrounds (Voronoi mosaics, 1/f
noise, ripples, hard-edged regions, paper), colours (HSV), styles (translucent, drop shadows, rims) and
degradations (box and motion blur, shot and salt-and-pepper noise, colour casts, WebP) it never draws. Its photographs
are a kind the held-out set has too (its crops of textures), but never the same pictures: the two lists share none.
Its patches come closest to two held-out backgrounds (Voronoi mosaics, hard-edged regions): flat areas with straight
edges; but they are separate polygons on another background, not a tiling of the scene or half-planes.
A data set is its seed: scene ``i`` of ``make_randomised(n, seed=s, levels=...)`` comes from its own generator
seeded ``(s, i)``.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .shapes import ShapesSample, resize_sample

__all__ = ["FAINT", "MIN_VISIBLE", "PHOTOS", "make_randomised_sample", "make_randomised"]

MIN_VISIBLE = 0.6  # of a shape's own pixels, after overlaps and the border: else it is not placed
LUMA = np.array([0.299, 0.587, 0.114])
# Photographs that ship with scikit-learn and scikit-image (no download), none of them in the held-out generator's
# TEXTURES; none shows a large circle, square or triangle that a crop would teach to be background.
PHOTOS = ("sklearn:china.jpg", "sklearn:flower.jpg", "skimage:astronaut", "skimage:camera", "skimage:rocket")
# A shape drawn hard to see (``faint``, the eighth stage): close to its surroundings' colour (RGB distance 25–60, where
# the others are 25–140 at level 1 and mostly over 60), half of them outlined, with strokes down to 3 % of the radius
# (else 6 %) but 1.5 output pixels at least (so that the resize to the output keeps them). The misses the shapes YOLO
# had left were of this kind: faint shapes, thin outlines.
FAINT = {"contrast": (25.0, 60.0), "outlined": 0.5, "stroke": (0.03, 0.15), "least": 1.5}


# --- backgrounds ---------------------------------------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.6:  # linear, at any angle
        a = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(a) + yy * np.sin(a)
    else:  # radial, from anywhere
        t = np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = _colour(rng), _colour(rng)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _blotches(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One to three octaves of a coarse grid of random colours, each upsampled smoothly."""
    out = np.zeros((h, w, 3), dtype=np.float32)
    weights = []
    for octave in range(int(rng.integers(1, 4))):
        cells = int(rng.integers(2, 7)) * 2**octave
        grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
        weight = 0.5**octave
        out += weight * np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
        weights.append(weight)
    return out / sum(weights)


@functools.lru_cache(maxsize=len(PHOTOS))
def _photo_pixels(name: str) -> np.ndarray:
    source, item = name.split(":")
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        pixels = load_sample_image(item)
    else:
        import skimage.data

        pixels = getattr(skimage.data, item)()
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return np.asarray(pixels, dtype=np.uint8)


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A crop of one of the :data:`PHOTOS` at a random zoom, mirrored or not, with its colours shifted: real
    scenes' edges, corners and textures, which the drawn backgrounds lack."""
    src = _photo_pixels(str(rng.choice(PHOTOS)))
    zoom = float(np.exp(rng.uniform(np.log(0.25), np.log(1.0))))
    ch, cw = max(8, int(src.shape[0] * zoom)), max(8, int(src.shape[1] * zoom))
    ch, cw = min(ch, src.shape[0]), min(cw, int(ch * w / h), src.shape[1])
    y, x = int(rng.integers(0, src.shape[0] - ch + 1)), int(rng.integers(0, src.shape[1] - cw + 1))
    crop = Image.fromarray(src[y : y + ch, x : x + cw])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    if rng.random() < 0.5:  # another palette: mix the channels
        out = out @ rng.dirichlet(np.ones(3), size=3).T
    return out * rng.uniform(0.6, 1.2) + rng.uniform(-40, 40, 3)


def _background(rng: np.random.Generator, h: int, w: int, level: float, photos: float = 0.0) -> np.ndarray:
    if photos > 0 and rng.random() < photos:  # no draw at photos=0: the stage-2 pool is the same as before photos
        return np.clip(_photo(rng, h, w), 0, 255)
    kinds = ["flat", "gradient", "blotches"]
    kind = str(rng.choice(kinds, p=[0.2, 0.8 - 0.4 * level, 0.4 * level]))
    if kind == "flat":
        base = np.broadcast_to(_colour(rng), (h, w, 3)).astype(np.float32)
    elif kind == "gradient":
        base = _gradient(rng, h, w)
    else:
        base = _blotches(rng, h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.2 + 0.3 * level:  # sine waves (a hard-edged square wave: stripes)
        b = rng.uniform(0, np.pi)
        waves = np.sin((xx * np.cos(b) + yy * np.sin(b)) * rng.uniform(0.02, 0.6) + rng.uniform(0, 6.3))
        if rng.random() < 0.3:
            waves = np.sign(waves)
        base = base + waves[..., None] * rng.uniform(5, 15 + 45 * level) * rng.choice([-1, 1], size=3)
    if rng.random() < 0.2 * level:  # a checkerboard, faint or not
        period = rng.uniform(4, 40)
        checks = ((xx // period + yy // period) % 2)[..., None] * 2 - 1
        base = base + checks * rng.uniform(5, 45)
    if rng.random() < 0.2 * level:  # speckle: coarse grain, a few pixels wide
        grain = rng.normal(0, 1, size=(max(2, h // 3), max(2, w // 3), 3)).astype(np.float32)
        grain = np.asarray(Image.fromarray(grain[..., 0]).resize((w, h), Image.Resampling.NEAREST))[..., None]
        base = base + grain * rng.uniform(5, 30)
    return np.clip(base, 0, 255)


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, h: int, w: int, scale: float) -> None:
    """Thin lines, arcs and specks: things that are not shapes, drawn before the shapes."""
    for _ in range(int(rng.integers(1, 8))):
        colour = tuple(int(v) for v in _colour(rng))
        x0, y0, x1, y1 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)
        width = max(1, int(round(rng.uniform(0.5, 2.5) * scale)))
        kind = rng.random()
        if kind < 0.6:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=width)
        elif kind < 0.8:
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
            start = rng.uniform(0, 360)  # at most 240°: a closed arc would be an outlined circle
            draw.arc(box, start, start + rng.uniform(30, 240), fill=colour, width=width)
        else:
            r = rng.uniform(0.5, 1.5) * scale
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)


def _distractor(rng: np.random.Generator, draw: ImageDraw.ImageDraw, h: int, w: int, short: int) -> None:
    """A filled thing that is none of the classes: a cross, a five-pointed star or a long bar."""
    r = rng.uniform(0.05, 0.2) * short
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    angle = rng.uniform(0, 2 * np.pi)
    kind = rng.integers(0, 3)
    if kind == 0:  # a plus sign
        t = rng.uniform(0.2, 0.4)
        pts = np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                        [-1, -t], [-t, -t]])  # fmt: skip
    elif kind == 1:  # a star
        a = np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.35, 0.5))
        pts = np.stack([np.cos(a) * radii, np.sin(a) * radii], 1)
    else:  # a bar at least four times as long as it is wide
        t = rng.uniform(0.06, 0.25)
        pts = np.array([[-1, -t], [1, -t], [1, t], [-1, t]])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T * r + np.array([cx, cy])
    draw.polygon([(float(x), float(y)) for x, y in pts], fill=tuple(int(v) for v in _colour(rng)))


def _patches(rng: np.random.Generator, draw: ImageDraw.ImageDraw, h: int, w: int, short: int) -> None:
    """One to four flat polygons of five to seven corners, as large as the largest shapes or up to twice the
    scene's shorter side, often cut by its border: hard-edged, flat areas with straight sides and corners that
    are not one of the classes. Without them, a flat area with straight edges is a square or a triangle to the
    model (the mistake it made most on scenes of another generator: a 0.50 IoU for squares)."""
    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.integers(5, 8))
        # corners at sorted angles no closer than half an even share, at radii 0.5–1, convex or not; in about
        # one patch in thirteen a corner turns the outline so little that the patch looks four-cornered
        gaps = 0.5 + rng.dirichlet(np.ones(k)) * k * 0.5
        angles = rng.uniform(0, 2 * np.pi) + np.cumsum(gaps / gaps.sum() * 2 * np.pi)
        radii = rng.uniform(0.5, 1.0, k) * rng.uniform(0.25, 1.0) * short
        cx, cy = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h
        points = [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radii, strict=True)]
        draw.polygon(points, fill=tuple(int(v) for v in _colour(rng)))


# --- shapes --------------------------------------------------------------------------------------------------------


def _triangle(rng: np.random.Generator) -> np.ndarray:
    """Three unit-scale vertices (centred on their centroid) of an equilateral, isosceles, right or scalene
    triangle, no angle under 20° so it stays a triangle after a resize."""
    kind = rng.integers(0, 4)
    if kind == 0:
        angles = np.array([90, 210, 330]) * np.pi / 180
        pts = np.stack([np.cos(angles), np.sin(angles)], 1)
    elif kind == 1:  # isosceles: apex above a base
        half, height = rng.uniform(0.35, 1.0), rng.uniform(0.6, 1.8)
        pts = np.array([[0.0, -height], [-half, 0.0], [half, 0.0]])
    elif kind == 2:  # right angle
        pts = np.array([[0.0, 0.0], [rng.uniform(0.6, 1.6), 0.0], [0.0, rng.uniform(0.6, 1.6)]])
    else:
        while True:
            pts = rng.uniform(-1, 1, size=(3, 2))
            sides = [pts[(i + 1) % 3] - pts[i] for i in range(3)]
            cross = abs(sides[0][0] * sides[1][1] - sides[0][1] * sides[1][0])
            lengths = [float(np.hypot(*s)) for s in sides]
            # each angle's sine via the law of sines: sin(angle) = 2·area / (product of its two sides)
            if min(cross / (lengths[i] * lengths[(i + 1) % 3]) for i in range(3)) > np.sin(np.radians(20)):
                break
    pts = pts - pts.mean(0)
    return pts / np.abs(pts).max()


def _outline(kind: int, rng: np.random.Generator, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """A polygon (or a circle's bounding box) in canvas pixels; ``r`` is about half the shape's extent."""
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if kind == 1:
        return [(cx - r, cy - r), (cx + r, cy + r)]
    if kind == 2:
        if rng.random() < 0.4:  # axis-aligned squares are common in drawings
            rot = np.eye(2)
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * r / np.sqrt(2 if rng.random() < 0.3 else 1)
    else:
        pts = _triangle(rng) * r * 1.15
    pts = pts @ rot.T + np.array([cx, cy])
    return [(float(x), float(y)) for x, y in pts]


def _draw(draw: ImageDraw.ImageDraw, kind: int, points: list, **style) -> None:
    if kind == 1:
        draw.ellipse([*points[0], *points[1]], **style)
    else:
        draw.polygon(points, **style)


def _coverage(kind: int, corners: list, h: int, w: int, supersample: int, **style) -> np.ndarray:
    """Each canvas pixel's share of the drawn shape (0–1), drawn ``supersample`` times larger and box-filtered
    (anti-aliased) or at 1× (hard edges). Only the shape's neighbourhood is drawn."""
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    x0, x1 = max(0, int(min(xs)) - 2), min(w, int(max(xs)) + 3)
    y0, y1 = max(0, int(min(ys)) - 2), min(h, int(max(ys)) + 3)
    coverage = np.zeros((h, w), dtype=np.float32)
    if x0 >= x1 or y0 >= y1:
        return coverage
    local = Image.new("L", ((x1 - x0) * supersample, (y1 - y0) * supersample), 0)
    points = [((x - x0) * supersample, (y - y0) * supersample) for x, y in corners]
    _draw(ImageDraw.Draw(local), kind, points, **style)
    if supersample > 1:
        local = local.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    coverage[y0:y1, x0:x1] = np.asarray(local, dtype=np.float32) / 255.0
    return coverage


def _area(kind: int, outline: list, filled: bool, stroke: float) -> float:
    """The shape's pixel count were it wholly on the canvas (for the share the border cuts off)."""
    if kind == 1:
        (x0, _), (x1, _) = outline
        r = (x1 - x0) / 2
        return math.pi * r * r if filled else 2 * math.pi * r * stroke
    pts = np.asarray(outline)
    x, y = pts[:, 0], pts[:, 1]
    if filled:
        return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return float(np.hypot(*(np.roll(pts, -1, 0) - pts).T).sum()) * stroke


def _contrasting(rng: np.random.Generator, local: np.ndarray, need: float) -> np.ndarray:
    """A random colour at least ``need`` (RGB distance) from ``local``, with some brightness difference too (so a
    grey copy of the scene still shows it)."""
    for _ in range(50):
        colour = _colour(rng)
        if np.linalg.norm(colour - local) >= need and abs(float((colour - local) @ LUMA)) >= need / 4:
            return colour
    return np.where(local > 127, 0.0, 255.0)


def _finish(rng: np.random.Generator, canvas: np.ndarray, level: float) -> np.ndarray:
    """Camera and file: brightness / contrast / gamma, grey, blur, noise, JPEG. Returns uint8."""
    if rng.random() < 0.5 * level:
        canvas = (canvas - 128) * rng.uniform(0.6, 1.3) + 128 + rng.uniform(-30, 30)
        canvas = 255 * (np.clip(canvas, 0, 255) / 255) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.07 * level:
        canvas = np.repeat(canvas @ LUMA[:, None], 3, axis=2)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if rng.random() < 0.2 + 0.4 * level:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.6 + 1.6 * level))))
    pixels = np.asarray(image, dtype=np.float32)
    if rng.random() < 0.8:
        pixels = pixels + rng.normal(0, rng.uniform(1, 5 + 15 * level), size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.2 + 0.4 * level:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(int(90 - 70 * level), 96)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def make_randomised_sample(
    rng: np.random.Generator,
    size: tuple[int, int] = (128, 128),
    *,
    level: float = 1.0,
    max_shapes: int = 6,
    photos: float = 0.0,
    patches: float = 0.0,
    faint: float = 0.0,
) -> ShapesSample:
    """One scene of 1..``max_shapes`` shapes at difficulty ``level`` (0–1), drawn on its own canvas and resized
    to ``size`` (H, W); with probability ``photos`` on a crop of a photograph, with probability ``patches`` with
    flat polygons that are not shapes (:func:`_patches`) on its background; each shape with probability ``faint``
    hard to see (:data:`FAINT`). None of the three draws from the scene's generator when it is 0, so a pool drawn
    without them is the same as before they existed."""
    out_h, out_w = size
    scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.0 + 1.5 * level))))
    aspect = float(np.exp(rng.uniform(-0.58, 0.58) * level)) if rng.random() < 0.6 else 1.0
    h, w = max(24, round(out_h * scale * np.sqrt(aspect))), max(24, round(out_w * scale / np.sqrt(aspect)))
    short = min(h, w)
    supersample = 3 if rng.random() < 0.5 else 1  # anti-aliased edges, or hard ones
    background = _background(rng, h, w, level, photos)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if patches > 0 and rng.random() < patches:
        _patches(rng, draw, h, w, short)
    if rng.random() < 0.5 * level:
        _clutter(rng, draw, h, w, short / 128)
    for _ in range(int(rng.integers(1, 4)) if rng.random() < 0.35 * level else 0):
        _distractor(rng, draw, h, w, short)
    canvas = np.asarray(image, dtype=np.float32).copy()
    labels_map = np.zeros((h, w), dtype=np.uint8)
    owner = np.full((h, w), -1, dtype=np.int16)  # which shape a pixel shows

    # Radii: from 4 output pixels (8 at level 0) up to 28 % of the canvas's shorter side, log-uniform.
    min_r = (8.0 - 4.0 * level) * short / min(out_h, out_w)
    max_r = 0.28 * short
    kinds, placed = [], []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        hard = faint > 0 and rng.random() < faint
        for _attempt in range(20):
            kind = int(rng.integers(1, 4))
            r = float(np.exp(rng.uniform(np.log(min_r), np.log(max_r))))
            cx, cy = rng.uniform(-0.25 * r, w + 0.25 * r), rng.uniform(-0.25 * r, h + 0.25 * r)
            outline = _outline(kind, rng, cx, cy, r)
            filled = rng.random() > (FAINT["outlined"] if hard else 0.05 + 0.2 * level)
            # a hard one's stroke is thin, but at least FAINT["least"] output pixels wide: still there after the resize
            least = round(FAINT["least"] * short / min(out_h, out_w) * supersample) if hard else supersample
            widths = FAINT["stroke"] if hard else (0.06, 0.25)
            stroke = max(least, round(rng.uniform(*widths) * r * supersample)) if not filled else 0
            style = {"fill": 255} if filled else {"outline": 255, "width": stroke}
            coverage = _coverage(kind, outline, h, w, supersample, **style)
            pixels = coverage >= 0.5
            total = int(pixels.sum())
            if total < 6:
                continue
            area = _area(kind, outline, filled, stroke / supersample)
            # Most of it in sight: the border cuts little, and a new shape (drawn on top) hides little of any
            # earlier one.
            ok = total >= MIN_VISIBLE * area and all(
                int(((owner == j) & ~pixels).sum()) >= MIN_VISIBLE * earlier for j, (_, earlier) in enumerate(placed)
            )
            if ok:
                break
        else:
            continue
        # Contrast against what the shape covers (its own surroundings), not one pixel of a textured background.
        weight = coverage[..., None]
        local = (canvas * weight).sum((0, 1)) / max(float(weight.sum()), 1e-6)
        need = rng.uniform(*FAINT["contrast"]) if hard else rng.uniform(90 - 65 * level, 140)
        colour = _contrasting(rng, local, need)
        fill = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
        look = rng.random()
        if look < 0.25 * level:  # shaded: a gradient across the shape
            fill = fill * 0.6 + _gradient(rng, h, w) * 0.4
        elif look < 0.35 * level:  # noisy fill
            fill = fill + rng.normal(0, rng.uniform(5, 25), size=(h, w, 1))
        elif look < 0.5 * level and filled:  # a border in another colour
            width = max(1, round(rng.uniform(0.04, 0.15) * r * supersample))
            edge = _coverage(kind, outline, h, w, supersample, outline=255, width=width)
            border = _contrasting(rng, colour, 60.0)
            fill = fill * (1 - edge[..., None]) + border * edge[..., None]
        canvas = canvas * (1 - weight) + fill * weight
        owner[pixels] = len(placed)
        labels_map[pixels] = kind
        kinds.append(kind)
        placed.append((kind, total))

    boxes, labels = [], []
    for j, kind in enumerate(kinds):
        ys, xs = np.nonzero(owner == j)
        if len(xs):
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(kind)
    sample = ShapesSample(
        image=_finish(rng, canvas, level),
        mask=labels_map,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
    )
    return resize_sample(sample, size)


def _scene(job: tuple[int, int, tuple[int, int], float, float, float, float]) -> ShapesSample:
    seed, index, size, level, photos, patches, faint = job
    return make_randomised_sample(
        np.random.default_rng((seed, index)), size, level=level, photos=photos, patches=patches, faint=faint
    )


def make_randomised(
    n: int,
    *,
    seed: int,
    size: tuple[int, int] = (128, 128),
    levels: float | Sequence[float] = 1.0,
    workers: int = 1,
    photos: float = 0.0,
    patches: float = 0.0,
    faint: float = 0.0,
) -> list[ShapesSample]:
    """``n`` scenes at ``size``; scene ``i`` is drawn at ``levels[i]`` (or one level for all) from its own
    generator seeded ``(seed, i)``, so ``workers`` processes draw the same scenes as one. ``photos``: the share
    of scenes drawn on a photograph; ``patches``: the share with flat polygons on their background; ``faint``: the
    share of shapes drawn hard to see (:data:`FAINT`)."""
    per_scene = [float(levels)] * n if np.isscalar(levels) else [float(v) for v in levels]
    if len(per_scene) != n:
        raise ValueError(f"{len(per_scene)} levels for {n} scenes")
    jobs = [(seed, i, tuple(size), per_scene[i], photos, patches, faint) for i in range(n)]
    if workers <= 1 or n < 4 * workers:
        return [_scene(job) for job in jobs]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(_scene, jobs, chunksize=max(1, n // (workers * 16)))
