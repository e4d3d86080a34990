"""The toy haystack world: rendered shapes with captions, and a hidden oracle of visual appeal.

Every sample is a pure function of (world seed, index), so any worker can render any slice of the
world, in any order, and get the same bytes. The appeal factors follow the photography principles
the paper's specialist reviewers used (section 3.3): composition, lighting, color and contrast,
subject and background, and defects. The oracle's verdict is returned apart from the image and
caption, so stages that must not peek (automatic curation) never receive it.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from photogenic.config import WorldConfig

if TYPE_CHECKING:
    from photogenic.progress import Progress

__all__ = [
    "WORLD_VERSION",
    "APPEAL_WEIGHTS",
    "SHAPES",
    "COLORS",
    "BACKGROUNDS",
    "Scene",
    "WorldSample",
    "labelled_renders",
    "render_sample",
    "render_scene",
    "scene_at",
    "shape_mask",
    "iter_world",
    "oracle_appeal",
    "clean_caption",
    "caption_for",
    "contact_sheet",
]

# The renderer's version: part of every dataset request, so a change to what the world draws is never
# mistaken for an earlier dataset in the store.
WORLD_VERSION = 3

# Six shapes that stay distinct at 32 px under +-30 degree rotations, blur and noise (a diamond is a
# rotated square, and a small hexagon reads as a circle: both made the concept unlearnable at this size).
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
COLORS = {  # name -> hue in degrees
    "red": 0.0,
    "orange": 28.0,
    "yellow": 55.0,
    "green": 120.0,
    "cyan": 182.0,
    "blue": 225.0,
    "purple": 275.0,
    "pink": 325.0,
}
BACKGROUNDS = {  # name -> (base RGB, texture amplitude)
    "sky": ((0.50, 0.70, 0.92), 0.02),
    "grass": ((0.28, 0.55, 0.22), 0.06),
    "sand": ((0.86, 0.76, 0.52), 0.05),
    "night": ((0.07, 0.08, 0.20), 0.02),
    "snow": ((0.93, 0.94, 0.97), 0.02),
    "stone": ((0.50, 0.50, 0.50), 0.07),
}
_JUNK = ("IMG_{n}.JPG", "DSC0{n}.jpg", "free download", "stock photo", "HD wallpaper", "#art", "best price", "4k")
_SUPERSAMPLE = 3  # shapes are drawn at 3x and box-filtered down: anti-aliased edges
# Weights of each appeal factor in the oracle's weighted geometric mean.
_WEIGHTS = {
    "placement": 1.0,
    "size": 1.0,
    "cropping": 1.5,
    "exposure": 1.5,
    "shading": 0.7,
    "saturation": 1.0,
    "contrast": 1.2,
    "harmony": 0.6,
    "clutter": 1.2,
    "depth": 0.6,
    "blur": 1.5,
    "noise": 1.5,
    "compression": 1.2,
    "text": 1.5,
}


@dataclass(frozen=True)
class Scene:
    """Everything that decides one image: what it shows and how well it is shot."""

    shape: str
    color: str
    background: str
    cx: float  # subject centre, fraction of the width
    cy: float
    radius: float  # fraction of the side
    rotation: float  # degrees
    exposure: float  # gain; 1 is right
    shading: float  # strength of directional light on the subject, 0 = flat
    light_angle: float  # degrees
    saturation: float
    depth: float  # background gradient, 0 = flat
    clutter: int  # distracting objects behind the subject
    blur: float  # Gaussian blur sigma, in output pixels
    noise: float  # pixel noise sigma, in [0, 1] units
    jpeg_quality: int  # 100 = no compression artefacts
    text: str  # overlaid text, "" = none
    photogenic: bool  # drawn from the good ranges on purpose
    detail_seed: int  # clutter and texture
    duplicate_of: int = -1  # index of the sample this one copies, or -1
    near_duplicate: bool = False


@dataclass
class WorldSample:
    """One rendered sample: what the data stages see, and the oracle's hidden verdict."""

    index: int
    key: str
    image: bytes  # PNG
    caption: str  # web-style, possibly noisy
    oracle: dict[str, Any] = field(default_factory=dict)


APPEAL_WEIGHTS = _WEIGHTS  # public: the panel weighs an unexplained image's defect against them


def _smoothstep(x: float, lo: float, hi: float) -> float:
    t = min(max((x - lo) / (hi - lo), 0.0), 1.0)
    return t * t * (3 - 2 * t)


def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb((hue % 360) / 360, sat, val), dtype=np.float32)


def _subject_rgb(scene: Scene) -> np.ndarray:
    return _hsv(COLORS[scene.color], scene.saturation, 0.88)


def _factor_scores(scene: Scene) -> dict[str, float]:
    thirds = [(a, b) for a in (1 / 3, 2 / 3) for b in (1 / 3, 2 / 3)]
    d_thirds = min(math.dist((scene.cx, scene.cy), p) for p in thirds)
    d_centre = math.dist((scene.cx, scene.cy), (0.5, 0.5))
    bg_rgb = np.array(BACKGROUNDS[scene.background][0], dtype=np.float32)
    subject = _subject_rgb(scene)
    contrast = float(np.linalg.norm(subject - bg_rgb) / math.sqrt(3))
    bg_hue = _hue_of(bg_rgb)
    dh = abs((COLORS[scene.color] - bg_hue + 180) % 360 - 180)
    overhang = max(0.0, scene.radius - min(scene.cx, scene.cy, 1 - scene.cx, 1 - scene.cy))
    return {
        "placement": max(math.exp(-((d_thirds / 0.07) ** 2)), 0.9 * math.exp(-((d_centre / 0.07) ** 2)), 0.2),
        "size": max(math.exp(-(((scene.radius - 0.3) / 0.08) ** 2)), 0.05),
        "cropping": max(1.0 - 2.5 * overhang / scene.radius, 0.05),
        "exposure": max(math.exp(-((math.log(scene.exposure) / 0.22) ** 2)), 0.05),
        "shading": 0.5 + 0.5 * _smoothstep(scene.shading, 0.05, 0.4),
        "saturation": 0.2 + 0.8 * _smoothstep(scene.saturation, 0.35, 0.75),
        "contrast": 0.15 + 0.85 * _smoothstep(contrast, 0.12, 0.4),
        "harmony": 0.6 + 0.4 * max(math.exp(-(((dh - 180) / 45) ** 2)), math.exp(-(((dh - 30) / 20) ** 2))),
        "clutter": 1.0 / (1.0 + 0.6 * scene.clutter),
        "depth": 0.6 + 0.4 * scene.depth,
        "blur": max(math.exp(-((scene.blur / 0.6) ** 2)), 0.05),
        "noise": max(math.exp(-((scene.noise / 0.035) ** 2)), 0.05),
        "compression": 0.1 + 0.9 * _smoothstep(scene.jpeg_quality, 15, 80),
        "text": 0.25 if scene.text else 1.0,
    }


def _hue_of(rgb: np.ndarray) -> float:
    import colorsys

    return colorsys.rgb_to_hsv(*[float(c) for c in rgb])[0] * 360


def oracle_appeal(scene: Scene) -> tuple[float, dict[str, float]]:
    """The hidden ground truth: a weighted geometric mean of the factor scores, in [0, 1]."""
    scores = _factor_scores(scene)
    total = sum(_WEIGHTS.values())
    log_mean = sum(_WEIGHTS[k] * math.log(v) for k, v in scores.items()) / total
    return math.exp(log_mean), scores


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def caption_for(shape: str, color: str, background: str) -> str:
    """The clean caption of a concept combination: 'a red circle on a sky background'."""
    return f"{_a(color)} {shape} on {_a(background)} background"


def clean_caption(scene: Scene) -> str:
    """The careful, hand-written-style caption (paper, 3.3: the QT set's captions are written by hand)."""
    return caption_for(scene.shape, scene.color, scene.background)


def _web_caption(scene: Scene, rng: np.random.Generator, noise_rate: float) -> str:
    templates = (
        "{ac} {s} on {ab} background",
        "{c} {s}, {b} background",
        "photo of {ac} {s} against {b}",
        "{s} in {c} over {ab} backdrop",
    )
    color, shape, background = scene.color, scene.shape, scene.background
    text = templates[int(rng.integers(len(templates)))]
    if rng.random() < noise_rate:
        kind = int(rng.integers(6))
        if kind == 0:
            color = str(rng.choice([c for c in COLORS if c != color]))
        elif kind == 1:
            shape = str(rng.choice([s for s in SHAPES if s != shape]))
        elif kind == 2:
            text = "a {s} on {ab} background"
        elif kind == 3:
            text = "{c} {s}"
        elif kind == 4:
            junk = str(rng.choice(_JUNK)).format(n=int(rng.integers(1000, 9999)))
            text = f"{text} {junk}"
        else:
            return str(rng.choice(_JUNK[:2])).format(n=int(rng.integers(1000, 9999)))
    return text.format(c=color, s=shape, b=background, ac=_a(color), ab=_a(background))


def _draw_scene(rng: np.random.Generator, config: WorldConfig) -> Scene:
    photogenic = bool(rng.random() < config.photogenic_rate)
    shape = str(rng.choice(SHAPES))
    color = str(rng.choice(list(COLORS)))
    if photogenic:
        # Good on every principle: thirds or centre, sized and lit well, clean, contrasting background.
        anchors = [(1 / 3, 1 / 3), (2 / 3, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 2 / 3), (0.5, 0.5)]
        ax, ay = anchors[int(rng.integers(len(anchors)))]
        probe = Scene(shape, color, "sky", 0.5, 0.5, 0.3, 0, 1, 0.5, 0, 0.85, 0.8, 0, 0, 0, 100, "", True, 0)
        backgrounds = sorted(
            BACKGROUNDS,
            key=lambda b: (
                -_factor_scores(_replace(probe, background=b))["contrast"]
                * _factor_scores(_replace(probe, background=b))["harmony"]
            ),
        )
        radius = float(rng.uniform(0.25, 0.32))
        return Scene(
            shape=shape,
            color=color,
            background=str(backgrounds[int(rng.integers(2))]),
            cx=float(np.clip(ax + rng.normal(0, 0.015), radius, 1 - radius)),
            cy=float(np.clip(ay + rng.normal(0, 0.015), radius, 1 - radius)),
            radius=radius,
            rotation=float(rng.uniform(-10, 10)),
            exposure=float(rng.uniform(0.95, 1.05)),
            shading=float(rng.uniform(0.4, 0.7)),
            light_angle=float(rng.uniform(200, 250)),
            saturation=float(rng.uniform(0.8, 1.0)),
            depth=float(rng.uniform(0.7, 1.0)),
            clutter=0,
            blur=0.0,
            noise=0.0,
            jpeg_quality=100,
            text="",
            photogenic=True,
            detail_seed=int(rng.integers(2**31)),
        )
    # The haystack: every principle drawn broadly, defects common but not drowning the subject.
    radius = float(rng.uniform(0.24, 0.42))
    return Scene(
        shape=shape,
        color=color,
        background=str(rng.choice(list(BACKGROUNDS))),
        cx=float(rng.uniform(0.2, 0.8)),
        cy=float(rng.uniform(0.2, 0.8)),
        radius=radius,
        rotation=float(rng.uniform(-30, 30)),
        exposure=float(np.clip(math.exp(rng.normal(0, 0.3)), 0.5, 1.5)),
        shading=float(rng.uniform(0, 1)),
        light_angle=float(rng.uniform(0, 360)),
        saturation=float(rng.uniform(0.4, 1.0)),
        depth=float(rng.uniform(0, 1)),
        clutter=int(rng.choice([0, 0, 1, 2, 3, 4])),
        blur=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.3 else 0.0,
        noise=float(rng.uniform(0.015, 0.06)) if rng.random() < 0.4 else 0.0,
        jpeg_quality=int(rng.integers(12, 60)) if rng.random() < 0.35 else 100,
        text=_overlay_text(rng) if rng.random() < 0.2 else "",
        photogenic=False,
        detail_seed=int(rng.integers(2**31)),
    )


def _replace(scene: Scene, **changes: Any) -> Scene:
    import dataclasses

    return dataclasses.replace(scene, **changes)


def _overlay_text(rng: np.random.Generator) -> str:
    words = ("SALE", "50%", "www", "LOGO", "HD", "NEW", "FREE", "(c)")
    return " ".join(str(w) for w in rng.choice(words, size=int(rng.integers(1, 3))))


def shape_mask(shape: str, cx: float, cy: float, radius: float, rotation: float, size: int) -> np.ndarray:
    """The subject's coverage of each pixel, in [0, 1], exactly as `render_scene` anti-aliases it."""
    big = size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    _draw_shape(ImageDraw.Draw(mask), shape, cx * big, cy * big, radius * big, rotation, 255)
    return np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: list[float], offset: float) -> list[tuple[float, float]]:
        pts = []
        for i in range(n):
            a = math.radians(offset + rot + 360 * i / n)
            rr = radii[i % len(radii)] * r
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if shape == "square":
        return ring(4, [1.0], 45)
    if shape == "triangle":
        return ring(3, [1.1], -90)
    if shape == "star":
        return ring(10, [1.1, 0.45], -90)
    if shape == "cross":
        w = 0.36
        base = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
        c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
        return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in base]
    raise ValueError(f"no polygon for shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float, fill: Any) -> None:
    if shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        if shape == "ring":
            hole = 0.5 * r
            draw.ellipse([cx - hole, cy - hole, cx + hole, cy + hole], fill=0)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, rot), fill=fill)


@functools.lru_cache(maxsize=8)
def _grid(big: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big
    return yy, xx


def _render(scene: Scene, size: int, texture: bool = True) -> Image.Image:
    big = size * _SUPERSAMPLE
    rng = np.random.default_rng(scene.detail_seed)
    base, amplitude = BACKGROUNDS[scene.background]
    grain = amplitude if texture else 0.0
    yy, xx = _grid(big)
    # Background: base colour, a vertical gradient for depth, a coarse texture.
    gradient = 1.0 + scene.depth * 0.35 * (0.5 - yy)
    coarse = rng.normal(0, 1, (size // 4 + 1, size // 4 + 1, 1)).astype(np.float32)
    coarse_big = np.asarray(
        Image.fromarray(((coarse[..., 0] * 0.25 + 0.5).clip(0, 1) * 255).astype(np.uint8)).resize(
            (big, big), Image.BICUBIC
        ),
        dtype=np.float32,
    )[..., None]
    img = np.asarray(base, dtype=np.float32)[None, None, :] * gradient[..., None]
    img = img + grain * (coarse_big / 255.0 - 0.5) * 2
    # Clutter: smaller, random objects behind the subject.
    for _ in range(scene.clutter):
        mask = Image.new("L", (big, big), 0)
        _draw_shape(
            ImageDraw.Draw(mask),
            str(rng.choice(SHAPES)),
            float(rng.uniform(0, 1)) * big,
            float(rng.uniform(0, 1)) * big,
            float(rng.uniform(0.07, 0.14)) * big,
            float(rng.uniform(0, 360)),
            255,
        )
        m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
        img = img * (1 - m) + _hsv(float(rng.uniform(0, 360)), float(rng.uniform(0.3, 0.9)), 0.7)[None, None] * m
    # Subject, lit from one side.
    mask = Image.new("L", (big, big), 0)
    _draw_shape(
        ImageDraw.Draw(mask), scene.shape, scene.cx * big, scene.cy * big, scene.radius * big, scene.rotation, 255
    )
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    a = math.radians(scene.light_angle)
    proj = ((xx - scene.cx) * math.cos(a) + (yy - scene.cy) * math.sin(a)) / max(scene.radius, 1e-3)
    light = 1.0 + scene.shading * 0.45 * np.clip(proj, -1, 1)
    subject = _subject_rgb(scene)[None, None, :] * light[..., None]
    img = img * (1 - m) + subject * m
    img = np.clip(img * scene.exposure, 0, 1)
    out = Image.fromarray((img * 255 + 0.5).astype(np.uint8)).resize((size, size), Image.BOX)
    if scene.text:
        draw = ImageDraw.Draw(out)
        font = ImageFont.load_default(size=max(8, size // 4))
        y = int(rng.uniform(0.05, 0.7) * size)
        draw.text(
            (int(rng.uniform(0, 0.3) * size), y),
            scene.text,
            fill=(255, 255, 255),
            font=font,
            stroke_width=1,
            stroke_fill=(0, 0, 0),
        )
    if scene.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(scene.blur))
    if scene.noise > 0:
        arr = np.asarray(out, dtype=np.float32) / 255.0 + rng.normal(0, scene.noise, (size, size, 3))
        out = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))
    if scene.jpeg_quality < 100:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=scene.jpeg_quality)
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return out


def render_scene(scene: Scene, size: int, texture: bool = True) -> Image.Image:
    """Render one scene at `size` pixels (what `render_sample` does for a drawn scene). Without `texture`
    the background is its base colour and gradient only: what a scene estimator can predict of it."""
    return _render(scene, size, texture)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _scene_rng(config: WorldConfig, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, index])


def scene_at(config: WorldConfig, index: int) -> Scene:
    """The scene of sample `index` (duplicates resolved to the scene they copy)."""
    return _draw_scene(_scene_rng(config, index), config)


def _picture(config: WorldConfig, index: int, scene: Scene | None = None) -> tuple[Scene, Image.Image]:
    """What sample `index` shows (its own `scene`, if already drawn). Web haystacks repeat themselves:
    some samples copy what an earlier sample shows, exactly or slightly darkened (a re-edit), and a
    copy can itself be copied."""
    if scene is None:
        scene = _draw_scene(_scene_rng(config, index), config)
    dup_rng = np.random.default_rng([config.seed, index, 1])
    if index > 0 and dup_rng.random() < config.duplicate_rate:
        source = int(dup_rng.integers(0, index))
        source_scene, image = _picture(config, source)
        scene = _replace(source_scene, duplicate_of=source)
        if dup_rng.random() < 0.5:
            arr = np.asarray(image, dtype=np.int16) - int(dup_rng.integers(2, 6))
            image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            scene = _replace(scene, near_duplicate=True)
        return scene, image
    return scene, _render(scene, config.image_size)


def render_sample(config: WorldConfig, index: int) -> WorldSample:
    """Render sample `index` of the world: a pure function of (config, index)."""
    rng = _scene_rng(config, index)
    scene, image = _picture(config, index, _draw_scene(rng, config))  # the caption draws from rng next
    appeal, factors = oracle_appeal(scene)
    caption = _web_caption(scene, rng, config.caption_noise)
    oracle = {
        "appeal": round(appeal, 6),
        "photogenic": scene.photogenic,
        "factors": {k: round(v, 6) for k, v in factors.items()},
        "shape": scene.shape,
        "color": scene.color,
        "background": scene.background,
        "clean_caption": clean_caption(scene),
        "duplicate_of": scene.duplicate_of,
        "near_duplicate": scene.near_duplicate,
    }
    key = f"world{config.seed:04d}-{index:09d}"
    return WorldSample(index=index, key=key, image=_png(image), caption=caption, oracle=oracle)


def labelled_renders(
    config: WorldConfig, start: int, stop: int, progress: Progress | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Renders `start`..`stop` as a uint8 array (N, 3, H, W) with their oracle labels: `appeal`, `text`
    (an overlay is present), and `shape`, `color`, `background` as indices into SHAPES, COLORS and
    BACKGROUNDS. Judges learn from these; the haystack's own oracle stays in its sidecar. `progress`
    counts the renders."""
    images, appeal, text, shape, color, background = [], [], [], [], [], []
    colors, backgrounds = list(COLORS), list(BACKGROUNDS)
    for index in range(start, stop):
        scene = _draw_scene(_scene_rng(config, index), config)
        images.append(np.asarray(_render(scene, config.image_size), dtype=np.uint8).transpose(2, 0, 1))
        appeal.append(oracle_appeal(scene)[0])
        text.append(bool(scene.text))
        shape.append(SHAPES.index(scene.shape))
        color.append(colors.index(scene.color))
        background.append(backgrounds.index(scene.background))
        if progress is not None:
            progress.update()
    labels = {
        "appeal": np.asarray(appeal, dtype=np.float32),
        "text": np.asarray(text, dtype=np.float32),
        "shape": np.asarray(shape, dtype=np.int64),
        "color": np.asarray(color, dtype=np.int64),
        "background": np.asarray(background, dtype=np.int64),
    }
    # C-contiguous (N, C, H, W): stacking the transposed views would keep each image's (H, W, C) memory
    # order, and torch then runs the judges' convolutions channels-last, in other float sums.
    return np.ascontiguousarray(np.stack(images)), labels


def iter_world(config: WorldConfig, start: int = 0, stop: int | None = None) -> Iterator[WorldSample]:
    """Samples `start`..`stop` of the world, rendered lazily (bounded memory)."""
    stop = config.num_samples if stop is None else min(stop, config.num_samples)
    for index in range(start, stop):
        yield render_sample(config, index)


def contact_sheet(config: WorldConfig, columns: int = 8, pool: int = 3000, scale: int = 3) -> Image.Image:
    """A contact sheet: a row of random haystack samples above a row of the most photogenic ones.

    Args:
        config: the world.
        columns: samples per row.
        pool: how many samples to render to find the most photogenic.
        scale: upscaling of each image.

    Returns:
        The sheet as a PIL image, with captions under each image.
    """
    pool = min(pool, config.num_samples)
    samples = list(iter_world(config, 0, pool))
    rng = np.random.default_rng(config.seed)
    random_pick = [samples[int(i)] for i in rng.choice(len(samples), size=min(columns, len(samples)), replace=False)]
    best = sorted(samples, key=lambda s: -s.oracle["appeal"])[:columns]
    cell = config.image_size * scale
    label_h, title_h, pad = 34, 18, 6
    width = columns * (cell + pad) + pad
    height = 2 * (title_h + cell + label_h) + pad
    sheet = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=10)
    title_font = ImageFont.load_default(size=13)
    rows = [("Random haystack samples (web captions)", random_pick), ("Most photogenic (hidden oracle)", best)]
    y = pad
    for title, row in rows:
        draw.text((pad, y), title, fill=(20, 20, 20), font=title_font)
        y += title_h
        for i, sample in enumerate(row):
            x = pad + i * (cell + pad)
            img = Image.open(io.BytesIO(sample.image)).convert("RGB").resize((cell, cell), Image.NEAREST)
            sheet.paste(img, (x, y))
            words = f"{sample.caption}  [{sample.oracle['appeal']:.2f}]"
            draw.multiline_text((x, y + cell + 2), _wrap(words, 18), fill=(40, 40, 40), font=font, spacing=1)
        y += cell + label_h
    return sheet


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:3])
