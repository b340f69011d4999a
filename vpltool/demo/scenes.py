"""Demo-world scenes: textured backgrounds, coloured shapes, exact masks and word-level captions.

A scene is a ``size x size`` RGB image of 0-3 shapes (8 classes) over one of 4 backgrounds, with its exact
ground-truth mask, its image-level labels and a caption. A tiny CLIP is trained on the captions and the whole
weakly-supervised pipeline is scored against the masks, so everything here is numpy + PIL, seeded and
deterministic: the same seed gives byte-identical files. A 96 px scene renders in 1-2 ms on one CPU core.

* Background kind (grass, sky, wall, water) is never a class: every background pixel is 0. It appears in the
  caption so that CLIP can learn background words.
* Shapes are drawn in order; a later shape occludes earlier ones, and a class with no visible pixel left is
  dropped from both the labels and the mask.
* Distractors ("decoys") are ellipses in the colours of a class: painted, but background in the mask, so that
  colour alone never explains a class.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw

from ..errors import VplError

CLASSES: tuple[str, ...] = (
    "background", "circle", "star", "square", "triangle", "ring", "cross", "hexagon", "diamond",
)
BACKGROUNDS: tuple[str, ...] = ("grass", "sky", "wall", "water")
MAX_CAPTION_WORDS = 14
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Sizes in pixels; fractions in [0, 1]."""

    size: int = 96  # square images: CLIP-friendly, and 96 px keeps a scene at ~1 ms
    n_classes: int = 8  # the first n classes of CLASSES[1:]
    min_objects: int = 0  # 0 lets ``empty_fraction`` decide empty scenes; > 0 never draws an empty scene
    max_objects: int = 3
    min_diameter: float = 16  # circumscribed diameter; 16 px is still ~1 patch of a ViT-B/16
    max_diameter: float = 48
    color_jitter: float = 0.1  # saturation and value scaled by 1 ± this, hue shifted by ± this x 90°
    noise: float = 8.0  # std of per-pixel Gaussian noise, in 0..255 units
    empty_fraction: float = 0.08  # VOC has no empty images, but the pipeline must survive them
    distractors: float = 0.0  # probability per scene of one decoy ellipse in a class's colours
    ignore_border: int = 0  # > 0: a band this many px wide on every object boundary becomes 255 (VOC-like)


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image: [H, W, 3] uint8 RGB.
        mask: [H, W] uint8: 0 = background, c in 1..n_classes = ``CLASSES[c]``, 255 = ignore band (if asked).
        labels: classes with at least one pixel in ``mask``, unique, in drawing order.
        background: one of BACKGROUNDS.
        caption: lower-case English naming every label and the background, at most 14 words.
    """

    image: np.ndarray
    mask: np.ndarray
    labels: tuple[int, ...]
    background: str
    caption: str


@dataclass(frozen=True)
class Placement:
    """One shape to draw, in pixels (x right, y down) and radians."""

    cls: int  # 1..8: the shape, colours and mask value
    cx: float  # the centre may lie outside the frame: the shape is then clipped
    cy: float
    diameter: float  # circumscribed diameter
    angle: float = 0.0
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # colour jitter (dh, ds, dv); see _shift_rgb
    decoy: bool = False  # an ellipse in this class's colours, left background in the mask


# --------------------------------------------------------------------------------------------- shapes
def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    """[n, 2] vertices of a regular polygon on a circle of ``radius``, the first one at ``phase``."""
    t = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return _regular(2 * points) * radii[:, None]


_W, _L = 0.3, 0.95  # plus sign: arm half-width and length (its corners then lie inside the unit circle)
_CROSS = np.array([(_W, _L), (_W, _W), (_L, _W), (_L, -_W), (_W, -_W), (_W, -_L),
                   (-_W, -_L), (-_W, -_W), (-_L, -_W), (-_L, _W), (-_W, _W), (-_W, _L)])

# Unit-radius outlines as (polygon, fill) layers: fill 1 paints, 0 cuts a hole (the ring).
_OUTLINES: dict[str, list[tuple[np.ndarray, int]]] = {
    "circle": [(_regular(48), 1)],
    "star": [(_star(), 1)],
    "square": [(_regular(4, phase=np.pi / 4), 1)],
    "triangle": [(_regular(3), 1)],
    "ring": [(_regular(48), 1), (_regular(48, 0.55), 0)],
    "cross": [(_CROSS, 1)],
    "hexagon": [(_regular(6), 1)],
    "diamond": [(np.array([(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)]), 1)],  # not a turned square
    "ellipse": [(_regular(48) * (1.0, 0.5), 1)],  # decoys only
}

# (main colour, pattern, second tone). Patterned classes make texture, not just colour, informative.
_LOOKS: dict[str, tuple[RGB, str, RGB | None]] = {
    "circle": ((220, 35, 35), "solid", None),
    "star": ((250, 210, 20), "solid", None),
    "square": ((35, 60, 225), "solid", None),
    "triangle": ((20, 190, 60), "solid", None),
    "ring": ((145, 45, 195), "solid", None),
    "cross": ((255, 130, 10), "solid", None),
    "hexagon": ((0, 200, 210), "stripes", (15, 55, 95)),
    "diamond": ((235, 95, 170), "dots", (250, 245, 235)),
}


def _outline_mask(shape: str, p: Placement, size: int) -> np.ndarray:
    """[size, size] bool: the pixels covered by ``shape`` placed by ``p`` (clipped to the frame)."""
    c, s = np.cos(p.angle), np.sin(p.angle)
    to_world = np.array([[c, -s], [s, c]]) * (p.diameter / 2)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, fill in _OUTLINES[shape]:
        draw.polygon((poly @ to_world.T + (p.cx, p.cy)).ravel().tolist(), fill=fill)
    return np.asarray(canvas, dtype=bool)


def _shift_rgb(rgb: RGB, shift: tuple[float, float, float]) -> np.ndarray:
    """[3] float32 RGB in 0..255: hue + dh (fraction of the wheel), saturation and value x (1 + ds), (1 + dv)."""
    h, s, v = colorsys.rgb_to_hsv(*(x / 255 for x in rgb))
    dh, ds, dv = shift
    out = colorsys.hsv_to_rgb((h + dh) % 1.0, min(max(s * (1 + ds), 0.0), 1.0), min(max(v * (1 + dv), 0.0), 1.0))
    return np.array(out, dtype=np.float32) * 255


def _paint(image: np.ndarray, region: np.ndarray, p: Placement) -> None:
    """Fill ``region`` of the float [H, W, 3] ``image`` with the look of class ``p.cls``, in place."""
    main, pattern, second = _LOOKS[CLASSES[p.cls]]
    c1 = _shift_rgb(main, p.shift)
    if pattern == "solid" or second is None:
        image[region] = c1
        return
    ys, xs = np.nonzero(region)
    # texture lives in the shape's own frame, so it turns and scales with the shape
    c, s, r = np.cos(p.angle), np.sin(p.angle), p.diameter / 2
    u = ((xs - p.cx) * c + (ys - p.cy) * s) / r
    v = (-(xs - p.cx) * s + (ys - p.cy) * c) / r
    if pattern == "stripes":
        on = np.floor(u / 0.3) % 2 == 1
    else:  # dots on a 0.5-radius grid
        on = (np.mod(u, 0.5) - 0.25) ** 2 + (np.mod(v, 0.5) - 0.25) ** 2 < 0.14**2
    image[ys, xs] = np.where(on[:, None], _shift_rgb(second, p.shift), c1)


# --------------------------------------------------------------------------------------------- backgrounds
def _value_noise(rng: np.random.Generator, size: int, grid: tuple[int, int]) -> np.ndarray:
    """[size, size] float32 in [0, 1]: a (rows, cols) grid of uniform values, bicubically upsampled."""
    cells = Image.fromarray(rng.random(grid, dtype=np.float32))
    return np.clip(np.asarray(cells.resize((size, size), Image.Resampling.BICUBIC)), 0.0, 1.0)


def _lerp(a: RGB, b: RGB, t: np.ndarray) -> np.ndarray:
    """[*t.shape, 3] float32 colours from ``a`` (t = 0) to ``b`` (t = 1)."""
    a_, b_ = np.array(a, np.float32), np.array(b, np.float32)
    return a_ + (b_ - a_) * t[..., None].astype(np.float32)


def _grass(rng: np.random.Generator, n: int) -> np.ndarray:
    # patches + clumps + blades (a grid with 5x more columns than rows stretches noise vertically)
    patches, clumps, blades = (_value_noise(rng, n, grid) for grid in ((4, 4), (12, 12), (8, 40)))
    return _lerp((35, 85, 25), (125, 180, 60), 0.45 * patches + 0.3 * clumps + 0.25 * blades)


def _sky(rng: np.random.Generator, n: int) -> np.ndarray:
    y = np.linspace(0.0, 1.0, n, dtype=np.float32)
    t = np.clip(y * rng.uniform(0.7, 1.2) + rng.uniform(-0.1, 0.1), 0, 1)[:, None].repeat(n, 1)
    image = _lerp((55, 115, 205), (170, 205, 240), t)
    axis = np.arange(n, dtype=np.float32)
    cover = np.zeros((n, n), np.float32)
    for _ in range(rng.integers(1, 4)):  # clouds = clusters of wide, flat Gaussian puffs
        cx, cy = rng.uniform(0, n), rng.uniform(0, 0.8 * n)
        for _ in range(rng.integers(3, 7)):
            px, py = cx + rng.normal(0, 0.09 * n), cy + rng.normal(0, 0.03 * n)
            sx, sy = rng.uniform(0.05, 0.1) * n, rng.uniform(0.03, 0.06) * n
            cover += np.outer(np.exp(-0.5 * ((axis - py) / sy) ** 2), np.exp(-0.5 * ((axis - px) / sx) ** 2))
    alpha = 0.9 * np.clip(cover, 0, 1)[..., None]
    return image * (1 - alpha) + np.float32(250) * alpha


def _wall(rng: np.random.Generator, n: int) -> np.ndarray:
    bh = int(rng.integers(9, 15))
    bw, mortar = int(bh * rng.uniform(1.8, 2.5)), int(rng.integers(1, 3))
    y, x = np.mgrid[0:n, 0:n]
    y, x = y + rng.integers(bh), x + rng.integers(bw)
    row = y // bh
    xs = x + (row % 2) * (bw // 2)  # running bond: every other row shifted by half a brick
    tone = rng.uniform(0.75, 1.15, size=(row.max() + 1, xs.max() // bw + 1)).astype(np.float32)
    grime = 0.85 + 0.3 * _value_noise(rng, n, (16, 16))
    image = np.array((160, 68, 45), np.float32) * (tone[row, xs // bw] * grime)[..., None]
    image[(y % bh < mortar) | (xs % bw < mortar)] = (185, 178, 165)
    return image


def _water(rng: np.random.Generator, n: int) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    a = rng.uniform(-0.3, 0.3)
    along, across = x * np.cos(a) - y * np.sin(a), y * np.cos(a) + x * np.sin(a)
    wobble = rng.uniform(2, 5) * np.sin(2 * np.pi * along / rng.uniform(30, 70) + rng.uniform(0, 2 * np.pi))
    t = 0.5 + 0.5 * np.sin(2 * np.pi * (across + wobble) / rng.uniform(6, 12) + rng.uniform(0, 2 * np.pi))
    return _lerp((20, 65, 125), (80, 150, 205), 0.8 * t + 0.2 * _value_noise(rng, n, (6, 6)))


_TEXTURES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "grass": _grass, "sky": _sky, "wall": _wall, "water": _water,
}


# --------------------------------------------------------------------------------------------- captions
_WHERE = {
    "grass": ("on grass", "on the grass"),
    "sky": ("in the sky", "against the sky"),
    "wall": ("against a wall", "by a wall", "on a wall"),
    "water": ("on water", "on the water", "in the water"),
}
_SCENERY = {"grass": ("grass", "the grass"), "sky": ("the sky",), "wall": ("a wall", "a brick wall"),
            "water": ("water", "the water")}
_TEMPLATES = ("a photo of {objs} {where}.", "a picture of {objs} {where}.", "an image of {objs} {where}.",
              "{objs} {where}.", "{scenery} with {objs}.")
_EMPTY_TEMPLATES = ("a photo of {scenery}.", "a picture of {scenery}.", "an image of {scenery}.",
                    "just {scenery}.", "{scenery} and nothing else.")


def tokenize_caption(caption: str) -> list[str]:
    """The words of a caption: lower-case letter runs, punctuation dropped."""
    return re.findall(r"[a-z]+", caption.lower())


def caption_vocabulary() -> list[str]:
    """Every word any caption can contain, sorted (class names, background words, template words)."""
    phrases = [*CLASSES[1:], "a and", *_TEMPLATES, *_EMPTY_TEMPLATES]
    phrases += [p for group in (*_WHERE.values(), *_SCENERY.values()) for p in group]
    return sorted({w for p in phrases for w in tokenize_caption(re.sub(r"\{\w+\}", " ", p))})


def _enumerate(items: Sequence[str]) -> str:
    """'x' | 'x and y' | 'x, y and z'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def make_caption(rng: np.random.Generator, names: Sequence[str], background: str) -> str:
    """A caption naming every class in ``names`` (shuffled) and the background, at most 14 words."""
    scenery = _SCENERY[background][rng.integers(len(_SCENERY[background]))]
    if not names:
        return _EMPTY_TEMPLATES[rng.integers(len(_EMPTY_TEMPLATES))].format(scenery=scenery)
    names = [names[i] for i in rng.permutation(len(names))]
    where = _WHERE[background][rng.integers(len(_WHERE[background]))]
    objs = _enumerate([f"a {name}" for name in names])
    fits = [c for t in _TEMPLATES if len(tokenize_caption(c := t.format(objs=objs, where=where, scenery=scenery)))
            <= MAX_CAPTION_WORDS]
    if not fits:  # many objects (max_objects > 3): drop the articles, which keeps 8 names within 14 words
        fits = [f"{_enumerate(names)} {min(_WHERE[background], key=len)}."]
    return fits[rng.integers(len(fits))]


# ------------------------------------------------------------------------------- detailed captions (toy CLIP)
# What a detailed caption may say about an object besides its name: how it looks (the colour or texture of its
# class), how big it is and where it lies. Computed from the mask, so a crop or a flip is re-described exactly.
LOOK_WORDS: dict[str, str] = {
    "circle": "red", "star": "yellow", "square": "blue", "triangle": "green", "ring": "purple", "cross": "orange",
    "hexagon": "striped", "diamond": "dotted",
}
COUNT_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")
SMALL_AREA, BIG_AREA = 0.04, 0.10  # share of the image: below = "small", above = "big", between = no size word
DETAILED_TEMPLATES = ("a photo of {objs} {where}.", "a picture of {objs} {where}.", "{objs} {where}.",
                      "{count} {shapes} {where}: {objs}.", "{scenery} with {objs}.")
MAX_DETAILED_WORDS = 38


def _position(ys: np.ndarray, xs: np.ndarray, size: tuple[int, int]) -> str:
    """'at the top left', 'at the bottom', 'at the right', 'in the middle': the centroid's third on each axis."""
    v = ("top", "", "bottom")[min(int(3 * ys.mean() / size[0]), 2)]
    h = ("left", "", "right")[min(int(3 * xs.mean() / size[1]), 2)]
    return f"at the {' '.join(w for w in (v, h) if w)}" if v or h else "in the middle"


def detailed_caption(rng: np.random.Generator, mask: np.ndarray, labels: Sequence[int], background: str,
                     detail: float = 0.5) -> str:
    """A caption naming every class of ``labels`` with ``mask`` pixels and the background, each object described
    with probability ``detail`` per attribute by its look (colour/texture word), size and position.

    Objects are listed in reading order (top to bottom, then left to right) half of the time, shuffled otherwise;
    an optional count ("two shapes") comes first in one template. At most MAX_DETAILED_WORDS words.
    """
    counts = np.bincount(mask.ravel(), minlength=256)
    present = [c for c in labels if counts[c]]
    scenery = _SCENERY[background][rng.integers(len(_SCENERY[background]))]
    if not present:
        return _EMPTY_TEMPLATES[rng.integers(len(_EMPTY_TEMPLATES))].format(scenery=scenery)
    phrases, centres = [], []
    for c in present:
        ys, xs = np.nonzero(mask == c)
        name = CLASSES[c]
        area = counts[c] / mask.size
        size = "small" if area < SMALL_AREA else "big" if area > BIG_AREA else ""
        words = [w for w, keep in ((size, rng.random() < detail), (LOOK_WORDS[name], rng.random() < detail)) if keep]
        words = [w for w in words if w]
        phrase = " ".join(["a", *words, name])
        if rng.random() < detail:
            phrase += " " + _position(ys, xs, mask.shape)
        phrases.append(phrase)
        centres.append((int(3 * ys.mean() / mask.shape[0]), xs.mean()))
    order = np.lexsort(np.array(centres).T[::-1]) if rng.random() < 0.5 else rng.permutation(len(phrases))
    objs = _enumerate([phrases[i] for i in order])
    where = _WHERE[background][rng.integers(len(_WHERE[background]))]
    n = len(present)
    shapes = "shape" if n == 1 else "shapes"
    texts = [t.format(objs=objs, where=where, scenery=scenery, count=COUNT_WORDS[n], shapes=shapes)
             for t in DETAILED_TEMPLATES]
    fits = [t for t in texts if len(tokenize_caption(t)) <= MAX_DETAILED_WORDS]
    return fits[rng.integers(len(fits))] if fits else make_caption(rng, [CLASSES[c] for c in present], background)


def detailed_vocabulary() -> list[str]:
    """Every word a detailed caption can contain besides :func:`caption_vocabulary`'s, sorted."""
    words = {*LOOK_WORDS.values(), *COUNT_WORDS, "small", "big", "at", "the", "top", "bottom", "left", "right",
             "in", "middle", "shape", "shapes"}
    words |= {w for t in DETAILED_TEMPLATES for w in tokenize_caption(re.sub(r"\{\w+\}", " ", t))}
    return sorted(words - set(caption_vocabulary()))


# --------------------------------------------------------------------------------------------- scenes
def check_config(cfg: SceneConfig) -> None:
    n = len(CLASSES) - 1
    problems = [
        (cfg.size < 16, f"size must be >= 16, got {cfg.size}"),
        (not 1 <= cfg.n_classes <= n, f"n_classes must be in 1..{n}, got {cfg.n_classes}"),
        (not 0 <= cfg.min_objects <= cfg.max_objects, "need 0 <= min_objects <= max_objects"),
        (cfg.min_objects > cfg.n_classes, "min_objects exceeds n_classes (a class appears at most once per scene)"),
        (not 0 < cfg.min_diameter <= cfg.max_diameter, "need 0 < min_diameter <= max_diameter"),
        (not (0 <= cfg.empty_fraction <= 1 and 0 <= cfg.distractors <= 1), "fractions must lie in [0, 1]"),
        (cfg.noise < 0 or cfg.color_jitter < 0 or cfg.ignore_border < 0, "noise, jitter and border must be >= 0"),
    ]
    for bad, message in problems:
        if bad:
            raise VplError(f"scene config: {message}")


def _ignore_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Copy of ``mask`` with 255 on a band ``width`` px wide straddling every label change."""
    lo, hi = width // 2, width - width // 2  # window offsets [-lo, hi]: exactly `width` px across a straight edge
    mx, mn = mask, mask
    for axis in (0, 1):  # min/max filters are separable
        pad = [(0, 0), (0, 0)]
        pad[axis] = (lo, hi)
        mx = sliding_window_view(np.pad(mx, pad, mode="edge"), lo + hi + 1, axis=axis).max(-1)
        mn = sliding_window_view(np.pad(mn, pad, mode="edge"), lo + hi + 1, axis=axis).min(-1)
    return np.where(mx != mn, np.uint8(255), mask)


def compose(rng: np.random.Generator, cfg: SceneConfig, background: str, placements: Sequence[Placement]) -> Scene:
    """Draw ``placements`` in order over a ``background`` texture; labels = classes left visible.

    ``rng`` supplies the texture, the pixel noise and the caption; the shapes are fully given.
    """
    if background not in _TEXTURES:
        raise VplError(f"unknown background {background!r}; choose one of {', '.join(BACKGROUNDS)}")
    image = _TEXTURES[background](rng, cfg.size)
    mask = np.zeros((cfg.size, cfg.size), np.uint8)
    for p in placements:
        if not 1 <= p.cls < len(CLASSES):
            raise VplError(f"class index {p.cls} out of range 1..{len(CLASSES) - 1}")
        region = _outline_mask("ellipse" if p.decoy else CLASSES[p.cls], p, cfg.size)
        _paint(image, region, p)
        mask[region] = 0 if p.decoy else p.cls
    if cfg.noise > 0:
        image = image + rng.normal(0.0, cfg.noise, image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if cfg.ignore_border > 0:
        mask = _ignore_band(mask, cfg.ignore_border)
    visible = np.bincount(mask.ravel(), minlength=256) > 0
    labels = tuple(dict.fromkeys(p.cls for p in placements if not p.decoy and visible[p.cls]))
    caption = make_caption(rng, [CLASSES[c] for c in labels], background)
    return Scene(image=image, mask=mask, labels=labels, background=background, caption=caption)


def _random_placement(rng: np.random.Generator, cfg: SceneConfig, cls: int, decoy: bool = False) -> Placement:
    d = rng.uniform(cfg.min_diameter, cfg.max_diameter)
    cx, cy = rng.uniform(-0.15 * d, cfg.size + 0.15 * d, size=2)  # up to 30 % of the radius past the edge
    j = cfg.color_jitter
    shift = (rng.uniform(-j, j) / 4, rng.uniform(-j, j), rng.uniform(-j, j))
    return Placement(cls, float(cx), float(cy), float(d), float(rng.uniform(0, 2 * np.pi)), shift, decoy)


def sample_layout(rng: np.random.Generator, cfg: SceneConfig = SceneConfig()) -> tuple[str, list[Placement]]:
    """A scene's background and its placements in drawing order (decoys first: real objects may hide them); the
    draws :func:`render_scene` makes before it composes."""
    check_config(cfg)
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    most = min(cfg.max_objects, cfg.n_classes)
    empty = most == 0 or (cfg.min_objects == 0 and rng.random() < cfg.empty_fraction)
    count = 0 if empty else int(rng.integers(max(cfg.min_objects, 1), most + 1))
    classes = rng.permutation(np.arange(1, cfg.n_classes + 1))[:count]
    decoys = [_random_placement(rng, cfg, int(rng.integers(1, cfg.n_classes + 1)), decoy=True)
              for _ in range(int(rng.random() < cfg.distractors))]
    objects = [_random_placement(rng, cfg, int(c)) for c in classes]
    return background, decoys + objects


def render_scene(rng: np.random.Generator, cfg: SceneConfig = SceneConfig()) -> Scene:
    """Sample and draw one scene: background, 0..max_objects distinct classes, an optional decoy."""
    return compose(rng, cfg, *sample_layout(rng, cfg))


def decoy_masks(n: int, seed: int, cfg: SceneConfig = SceneConfig()) -> Iterator[np.ndarray]:
    """For the scenes of :func:`generate_scenes` (same ``n``, ``seed``, ``cfg``): [size, size] bool, the pixels
    of each scene's decoy left visible by the objects drawn over it (all False without a decoy). A decoy is
    background in the mask; this says which background pixels wear a class's colours (to measure how often masks
    or a decoder paint them as that class)."""
    for i in range(n):
        _, placements = sample_layout(np.random.default_rng([seed, i]), cfg)
        shown = np.zeros((cfg.size, cfg.size), bool)
        for p in placements:
            region = _outline_mask("ellipse" if p.decoy else CLASSES[p.cls], p, cfg.size)
            shown = (shown | region) if p.decoy else (shown & ~region)
        yield shown


def generate_scenes(n: int, seed: int, cfg: SceneConfig = SceneConfig()) -> Iterator[Scene]:
    """``n`` scenes; scene ``i`` depends only on ``(seed, i)``, so prefixes of larger runs are identical."""
    if seed < 0:
        raise VplError(f"seed must be >= 0, got {seed}")
    for i in range(n):
        yield render_scene(np.random.default_rng([seed, i]), cfg)


def split_seed(seed: int, split: str) -> int:
    """The seed of one split, derived from ``seed`` so that train and val never share a scene."""
    index = ("train", "val").index(split)
    return int(np.random.SeedSequence([seed, 1 + index]).generate_state(1, np.uint64)[0])
