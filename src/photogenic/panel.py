"""The rater of record for world models: each image explained as a scene of the world, the scene scored
by the oracle, and a simulated panel voting on pairs as the paper's raters did (section 4).

The oracle scores scenes, not pixels. `explain` finds the scene that best accounts for an image: the
background, exposure and depth from the background's pixels; the subject's colour from its hues; its
shape, position, size and rotation by rendering candidate masks and comparing them with the subject's
pixels; its saturation and directional light from the subject's values; then the defects, each by
rendering or re-applying it: blur (the candidate render blurred), noise (the residual's fine grain),
compression (JPEG re-encoding leaves an image at its own quality nearly unchanged), overlaid text
(white strokes outlined in black that the scene does not explain) and clutter (the residual's other
objects). The fit error says how well the explained scene accounts for the image; above
`panel.max_fit_error`, or with a scene outside what the world draws (heavy static, a speck of a
subject), the image is not a clean render of anything, which a rater calls a defect.

`bench/panel_validity.py` measures all of this against the truth on held-out world renders.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from photogenic.config import PanelConfig
from photogenic.data.ingest import bounded_map
from photogenic.progress import Progress
from photogenic.world import (
    APPEAL_WEIGHTS,
    BACKGROUNDS,
    COLORS,
    SHAPES,
    Scene,
    oracle_appeal,
    render_scene,
    shape_mask,
)

__all__ = [
    "Explanation",
    "PanelVotes",
    "explain",
    "explain_all",
    "panel_votes",
    "unexplained_appeal",
]

_ROW_OFFSET = 1 / 3  # the renderer's gradient is sampled at 3x and box-filtered: row j sits at (j + 1/3)/size
_EXPOSURES = np.exp(np.linspace(math.log(0.4), math.log(1.7), 30))
_DEPTHS = np.linspace(0.0, 1.0, 6)
_BLURS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)
_JPEG_QUALITIES = tuple(range(10, 96, 2))
_SYMMETRY = {"circle": 0, "ring": 0, "square": 90, "cross": 90, "triangle": 120, "star": 72}
# Area of each shape at radius 1 (renderer geometry: a square's corners lie on the radius, a triangle's
# and the star's outer points at 1.1, the star's inner ones at 0.45, the ring's hole at half the radius).
_AREA = {
    "circle": math.pi,
    "ring": 0.75 * math.pi,
    "square": 2.0,
    "triangle": 3 * math.sqrt(3) / 4 * 1.1**2,
    "star": 5 * 1.1 * 0.45 * math.sin(math.radians(36)),
    "cross": 2 * 2 * 0.72 - 0.72**2,
}
_HUES = np.array(list(COLORS.values()), dtype=np.float32)
_SUBJECT_VALUE = 0.88  # the renderer's subject brightness before light and exposure
_TEXT_DEFECT = (0.25, 1.5)  # the oracle's score and weight of a text overlay: an unexplained image's defect


@dataclass(frozen=True)
class Explanation:
    """The scene that best accounts for one image, and how well it does."""

    scene: Scene
    fit_error: float  # RMS error of the explained scene's render (0-1 units, smoothed), outside clutter and text
    explained: bool  # fit_error <= panel.max_fit_error, and a scene within what the world draws
    appeal: float  # the oracle's appeal of the scene; an unexplained image carries a defect on top

    def shows(self, shape: str | None, color: str | None, background: str | None) -> bool:
        """Whether the image shows what a prompt names (None: the prompt does not name it). An image the
        scene does not explain shows nothing for certain."""
        asked = {"shape": shape, "color": color, "background": background}
        return self.explained and all(v is None or getattr(self.scene, k) == v for k, v in asked.items())


def unexplained_appeal(appeal: float) -> float:
    """The oracle's appeal with one more defect factor, scored and weighted like a text overlay."""
    total = sum(APPEAL_WEIGHTS.values())
    score, weight = _TEXT_DEFECT
    return math.exp((total * math.log(appeal) + weight * math.log(score)) / (total + weight))


def explain(image: Any, config: PanelConfig) -> Explanation:
    """Explain one image (PIL image or uint8 HxWx3 array) as a scene of the world.

    Args:
        image: the image, square.
        config: the panel's settings (`max_fit_error`).

    Returns:
        The explained scene, its fit error, and its appeal under the oracle.
    """
    raw = _as_uint8(image)
    pixels = raw.astype(np.float32) / 255.0
    hsv = _hsv(pixels)  # the colour-based steps read it
    size = pixels.shape[0]
    smooth = ndimage.gaussian_filter(pixels, sigma=(0.7, 0.7, 0))
    background, exposure, depth, backdrop = _fit_background(smooth, np.ones((size, size), dtype=bool))
    foreground = _foreground(smooth, backdrop)
    background, exposure, depth, backdrop = _fit_background(smooth, ~ndimage.binary_dilation(foreground))
    foreground = _foreground(smooth, backdrop)
    color = _subject_color(hsv, foreground)
    subject = _subject_pixels(hsv, foreground, color)
    shape, cx, cy, radius, rotation, coverage = _fit_geometry(_soft_coverage(pixels, subject, backdrop), size)
    no_text = np.zeros((size, size), dtype=bool)
    saturation, shading, light_angle = _fit_light(pixels, hsv, coverage, cx, cy, radius, no_text)
    scene = Scene(
        shape=shape,
        color=color,
        background=background,
        cx=cx,
        cy=cy,
        radius=radius,
        rotation=rotation,
        exposure=exposure,
        shading=shading,
        light_angle=light_angle,
        saturation=saturation,
        depth=depth,
        clutter=0,
        blur=0.0,
        noise=0.0,
        jpeg_quality=_jpeg_quality(raw),
        text="",
        photogenic=False,
        detail_seed=0,
    )
    clean = render_scene(scene, size, texture=False)
    text_pixels = _text_pixels(pixels, np.asarray(clean, dtype=np.float32) / 255.0)
    if text_pixels.any():  # the overlay hides part of the subject's light
        saturation, shading, light_angle = _fit_light(pixels, hsv, coverage, cx, cy, radius, text_pixels)
        scene = replace(scene, text="TEXT", saturation=saturation, shading=shading, light_angle=light_angle)
        clean = render_scene(scene, size, texture=False)
    blur, render = _fit_blur(pixels, clean, coverage, text_pixels, scene.jpeg_quality)
    residual = pixels - render
    clutter, clutter_pixels = _clutter(smooth, render, coverage, text_pixels)
    ignore = text_pixels | clutter_pixels
    scene = replace(scene, blur=blur, noise=_noise(residual, ignore), clutter=clutter)
    fit_error = _fit_error(pixels, render, ignore)
    explained = fit_error <= config.max_fit_error and _within_world(scene)
    appeal = oracle_appeal(scene)[0]
    return Explanation(scene, fit_error, explained, appeal if explained else unexplained_appeal(appeal))


def _within_world(scene: Scene) -> bool:
    """Whether the scene lies within what the world draws (with a margin): pixel noise of at most 0.09
    (the world's worst is 0.06) and a subject radius between 0.12 and 0.6 of the side (the world's: 0.24
    to 0.42). Static smoothed away by the fit error, or a speck, explains nothing."""
    return scene.noise <= 0.09 and 0.12 <= scene.radius <= 0.6


_EXPLAIN_BLOCK = 64  # images per task of a worker process


def _explain_block(block: tuple[list[Any], PanelConfig]) -> list[Explanation]:
    images, config = block
    return [explain(image, config) for image in images]


def explain_all(
    images: list[Any], config: PanelConfig, workers: int = 1, progress: Progress | None = None
) -> list[Explanation]:
    """`explain` for every image, in order, in blocks over `workers` processes: the same explanations
    whatever the number of workers (each depends on its image alone). About 40 ms an image on one core
    (bench/results/panel_explain.md)."""
    blocks = [(images[i : i + _EXPLAIN_BLOCK], config) for i in range(0, len(images), _EXPLAIN_BLOCK)]
    found: list[Explanation] = []
    for part in bounded_map(_explain_block, blocks, workers):
        found.extend(part)
        if progress is not None:
            progress.update(len(part))
    return found


def _as_uint8(image: Any) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] != arr.shape[1] or arr.dtype != np.uint8:
        raise ValueError(f"explain takes a square RGB uint8 image, got an array of {arr.shape} {arr.dtype}")
    return arr


def _rows(size: int) -> np.ndarray:
    return (np.arange(size, dtype=np.float32) + _ROW_OFFSET) / size


def _fit_background(smooth: np.ndarray, where: np.ndarray) -> tuple[str, float, float, np.ndarray]:
    """The background, exposure and depth whose render matches the pixels in `where` best: the median
    absolute error (clipped highlights and the subject's edges do not pull it) over a coarse grid of
    exposures and depths, then a fine grid around the best."""
    size = smooth.shape[0]
    if where.sum() < size:  # the subject fills the frame: fall back on the border
        where = np.zeros_like(where)
        where[[0, -1], :] = where[:, [0, -1]] = True
    rows = np.broadcast_to(_rows(size)[:, None], (size, size))[where]
    observed = smooth[where]
    coarse = max(1, len(rows) // 128)  # a hundred pixels place it, a few hundred refine it
    fine = max(1, len(rows) // 384)
    best: tuple[float, str, float, float] | None = None
    for name, (base, _) in BACKGROUNDS.items():
        base = np.asarray(base)
        error, exposure, depth = _grid_fit(base, rows[::coarse], observed[::coarse], _EXPOSURES, _DEPTHS)
        fine_e = exposure * np.exp(np.linspace(-0.04, 0.04, 7))
        fine_d = np.clip(depth + np.linspace(-0.15, 0.15, 7), 0.0, 1.0)
        error, exposure, depth = _grid_fit(base, rows[::fine], observed[::fine], fine_e, fine_d)
        if best is None or error < best[0]:
            best = (error, name, exposure, depth)
    _, name, exposure, depth = best
    base = np.asarray(BACKGROUNDS[name][0], dtype=np.float32)
    backdrop = np.clip(exposure * (1.0 + depth * 0.35 * (0.5 - _rows(size)))[:, None, None] * base, 0, 1)
    return name, exposure, depth, np.broadcast_to(backdrop, smooth.shape)


def _grid_fit(
    base: np.ndarray, rows: np.ndarray, observed: np.ndarray, exposures: np.ndarray, depths: np.ndarray
) -> tuple[float, float, float]:
    gradient = 1.0 + depths[:, None] * 0.35 * (0.5 - rows[None, :])  # (D, N)
    lit = exposures[:, None, None] * gradient[None, :, :]  # (E, D, N)
    # The largest channel error of each pixel, a channel at a time: the same numbers as one (E, D, N, 3)
    # array reduced over its last axis, 5 times faster (numpy reduces a length-3 axis slowly).
    distance = np.zeros_like(lit)
    for channel in range(base.shape[-1]):
        off = np.abs(np.clip(lit * base[channel], 0, 1) - observed[None, None, :, channel])
        np.maximum(distance, off, out=distance)
    error = np.median(distance, axis=-1)  # (E, D)
    e, d = np.unravel_index(int(np.argmin(error)), error.shape)
    return float(error[e, d]), float(exposures[e]), float(depths[d])


def _foreground(smooth: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """Pixels the background does not explain: further from it than three times its own spread."""
    distance = np.abs(smooth - backdrop).max(-1)
    spread = 1.4826 * np.median(np.abs(distance - np.median(distance)))
    return distance > max(0.06, 3 * spread + np.median(distance))


def _hsv(pixels: np.ndarray) -> np.ndarray:
    """HSV of float RGB pixels, hue in [0, 1) (colorsys's convention, vectorised)."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    value = pixels.max(-1)
    spread = value - pixels.min(-1)
    saturation = np.where(value > 0, spread / np.maximum(value, 1e-12), 0.0)
    safe = np.maximum(spread, 1e-12)
    hue = np.where(value == r, ((g - b) / safe) % 6.0, np.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(spread > 0, hue / 6.0, 0.0)
    return np.stack([hue, saturation, value], -1).astype(np.float32)


def _nearest_color(hue_degrees: np.ndarray) -> np.ndarray:
    gap = np.abs((hue_degrees[..., None] - _HUES + 180) % 360 - 180)
    return np.argmin(gap, axis=-1)


def _subject_color(hsv: np.ndarray, foreground: np.ndarray) -> str:
    """The colour most of the foreground's saturated pixels are nearest to, interior pixels first (edges
    blend with the background)."""
    core = ndimage.binary_erosion(foreground)
    region = core if core.sum() >= 6 else foreground
    if not region.any():
        region = np.ones_like(foreground)
    seen = hsv[region]
    vivid = (seen[:, 1] > 0.2) & (seen[:, 2] > 0.12)
    if vivid.sum() < 3:
        vivid = np.ones(len(seen), dtype=bool)
    votes = np.bincount(_nearest_color(seen[vivid, 0] * 360), minlength=len(_HUES))
    return list(COLORS)[int(np.argmax(votes))]


def _subject_pixels(hsv: np.ndarray, foreground: np.ndarray, color: str) -> np.ndarray:
    """The foreground pixels of the subject's colour, as the largest connected piece with its holes'
    edges: clutter of other colours and stray pixels fall away."""
    index = list(COLORS).index(color)
    mine = foreground & (_nearest_color(hsv[..., 0] * 360) == index) & (hsv[..., 1] > 0.15)
    labels, count = ndimage.label(ndimage.binary_closing(mine) | mine)
    if count == 0:
        return foreground
    sizes = ndimage.sum(np.ones_like(labels), labels, index=range(1, count + 1))
    return (labels == 1 + int(np.argmax(sizes))) & foreground


def _soft_coverage(pixels: np.ndarray, subject: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """How much of each pixel the subject covers: where the pixel lies between the background's colour and
    the subject's (its interior's median), near the subject; 0 elsewhere. Unlike a thresholded mask, edge
    pixels count by their share, so sizes are not inflated."""
    core = ndimage.binary_erosion(subject)
    inner = pixels[core] if core.sum() >= 4 else pixels[subject]
    if len(inner) == 0:
        return subject.astype(np.float32)
    colour = np.median(inner, axis=0)
    toward = colour[None, None, :] - backdrop
    share = ((pixels - backdrop) * toward).sum(-1) / np.maximum(np.square(toward).sum(-1), 1e-4)
    near = ndimage.binary_dilation(subject, iterations=2)
    return np.where(near, np.clip(share, 0.0, 1.0), 0.0).astype(np.float32)


def _mask_error(mask: np.ndarray, subject: np.ndarray) -> float:
    return float(np.square(mask - subject).sum())


def _fit_geometry(target: np.ndarray, size: int) -> tuple[str, float, float, float, float, np.ndarray]:
    """The shape, centre, radius and rotation whose rendered coverage matches the subject's best: every
    shape from the coverage's centroid and area, rotations on a grid over the shape's symmetry, then
    coordinate descent for the three best shapes."""
    total = max(float(target.sum()), 1e-3)
    area = max(total, 1.0) / size**2
    ys, xs = np.mgrid[0:size, 0:size]
    cx0 = float(((xs + 0.5) * target).sum() / total / size) if target.any() else 0.5
    cy0 = float(((ys + 0.5) * target).sum() / total / size) if target.any() else 0.5
    starts = []
    for shape in SHAPES:
        radius = float(np.clip(math.sqrt(area / _AREA[shape]), 0.05, 0.6))
        period = _SYMMETRY[shape]
        rotations = np.arange(-period / 2, period / 2, 6.0) if period else np.zeros(1)
        errors = [_mask_error(shape_mask(shape, cx0, cy0, radius, r, size), target) for r in rotations]
        best = int(np.argmin(errors))
        starts.append((errors[best], shape, [cx0, cy0, radius, float(rotations[best])]))
    starts.sort(key=lambda s: s[0])
    fits = [_descend(shape, params, target, size) for _, shape, params in starts[:3]]
    error, shape, (cx, cy, radius, rotation) = min(fits, key=lambda f: f[0])
    return shape, cx, cy, radius, rotation, shape_mask(shape, cx, cy, radius, rotation, size)


def _descend(shape: str, params: list[float], target: np.ndarray, size: int) -> tuple[float, str, list[float]]:
    steps = [0.02, 0.02, 0.02, 4.0 if _SYMMETRY[shape] else 0.0]
    params = list(params)
    best = _mask_error(shape_mask(shape, *params, size), target)
    for _ in range(4):  # four halvings of every step
        improved = True
        while improved:
            improved = False
            for i, step in enumerate(steps):
                for sign in (1, -1):
                    if step == 0:
                        continue
                    trial = list(params)
                    trial[i] += sign * step
                    trial[2] = max(trial[2], 0.03)
                    error = _mask_error(shape_mask(shape, *trial, size), target)
                    if error < best - 1e-6:
                        best, params, improved = error, trial, True
        steps = [s / 2 for s in steps]
    return best, shape, params


def _fit_light(
    pixels: np.ndarray,
    hsv: np.ndarray,
    coverage: np.ndarray,
    cx: float,
    cy: float,
    radius: float,
    hidden: np.ndarray,
) -> tuple[float, float, float]:
    """Saturation (the subject's HSV saturation, unclipped pixels) and directional light: the renderer's
    light is linear across the subject, so a plane fitted to its values gives the strength and angle.
    `hidden` pixels (an overlay) are left out."""
    size = pixels.shape[0]
    inside = (coverage > 0.99) & ~hidden
    if inside.sum() < 4:
        inside = (coverage > 0.5) & ~hidden
    seen = hsv[inside]
    unclipped = pixels[inside].max(-1) < 0.985
    use = unclipped if unclipped.sum() >= 4 else np.ones(len(seen), dtype=bool)
    saturation = float(np.clip(np.median(seen[use, 1]), 0.0, 1.0)) if len(seen) else 0.7
    ys, xs = np.nonzero(inside)
    if len(xs) < 6 or use.sum() < 6:
        return saturation, 0.0, 0.0
    dx = ((xs + 0.5) / size - cx)[use] / radius
    dy = ((ys + 0.5) / size - cy)[use] / radius
    values = seen[use, 2]
    design = np.stack([np.ones_like(dx), dx, dy], axis=1)
    (v0, gx, gy), *_ = np.linalg.lstsq(design, values, rcond=None)
    if v0 <= 0:
        return saturation, 0.0, 0.0
    shading = float(np.clip(math.hypot(gx, gy) / v0 / 0.45, 0.0, 1.0))
    return saturation, shading, float(math.degrees(math.atan2(gy, gx)) % 360)


def _text_pixels(pixels: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """An overlay's strokes: near-white pixels the scene does not explain, next to near-black ones it
    does not explain either (the renderer's text is white with a black outline)."""
    wrong = np.abs(pixels - clean).max(-1) > 0.2
    spread = pixels.max(-1) - pixels.min(-1)
    white = wrong & (pixels.min(-1) > 0.7) & (spread < 0.2)
    black = wrong & (pixels.max(-1) < 0.3) & (spread < 0.15)
    near = ndimage.binary_dilation(black, iterations=1)
    strokes = white & near
    if strokes.sum() < 3 or black.sum() < 3:
        return np.zeros(pixels.shape[:2], dtype=bool)
    region = ndimage.binary_dilation(strokes, iterations=2)
    return ndimage.binary_dilation(region & (white | black), iterations=1)


def _fit_blur(
    pixels: np.ndarray, clean: Image.Image, coverage: np.ndarray, ignore: np.ndarray, jpeg_quality: int
) -> tuple[float, np.ndarray]:
    """The Gaussian blur under which the clean render, compressed as the image was, matches the image best
    along the subject's outline (where blur shows; trimmed squared error: the worst tenth of those pixels
    is texture, clutter or text)."""
    body = coverage > 0.5
    band = ndimage.binary_dilation(body, iterations=2) & ~ndimage.binary_erosion(body, iterations=2) & ~ignore
    if band.sum() < 8:
        band = ~ignore
    best: tuple[float, float, np.ndarray] | None = None
    for sigma in _BLURS:
        render = clean.filter(ImageFilter.GaussianBlur(sigma)) if sigma else clean
        if jpeg_quality < 100:
            render = _jpeg(render, jpeg_quality)
        array = np.asarray(render, dtype=np.float32) / 255.0
        err = np.square(pixels - array).sum(-1)[band]
        trimmed = float(np.sort(err)[: max(1, int(0.9 * len(err)))].mean())
        if best is None or trimmed < best[0] - 1e-7:
            best = (trimmed, sigma, array)
    return best[1], best[2]


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _noise(residual: np.ndarray, ignore: np.ndarray) -> float:
    """Pixel noise from the residual's fine grain (Immerkaer's Laplacian-difference estimator, robust form),
    after subtracting what quantisation alone gives."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    response = np.stack([ndimage.convolve(residual[..., c], kernel, mode="reflect") for c in range(3)], -1)
    keep = ~ndimage.binary_dilation(ignore, iterations=1)
    keep[[0, -1], :] = keep[:, [0, -1]] = False
    values = np.abs(response[keep]) if keep.any() else np.abs(response).ravel()
    sigma = float(1.4826 * np.median(values) / 6.0)
    return sigma if sigma > 0.012 else 0.0


def _jpeg_quality(pixels: np.ndarray) -> int:
    """The JPEG quality the image was saved at, or 100: re-encoding an image at its own quality changes it
    least, relative to the neighbouring qualities (an image never compressed shows no such dip)."""
    image = Image.fromarray(pixels)
    original = pixels.astype(np.float32)
    changes = np.array(
        [float(np.abs(original - np.asarray(_jpeg(image, q), dtype=np.float32)).mean()) for q in _JPEG_QUALITIES]
    )
    trend = ndimage.median_filter(changes, size=9, mode="nearest")
    dip = changes / np.maximum(trend, 1e-6)
    i = int(np.argmin(dip))
    return int(_JPEG_QUALITIES[i]) if dip[i] < 0.6 else 100


def _clutter(smooth: np.ndarray, render: np.ndarray, coverage: np.ndarray, text: np.ndarray) -> tuple[int, np.ndarray]:
    """Objects behind the subject: pieces of the residual, outside the subject and the text, of at least
    four pixels."""
    size = smooth.shape[0]
    distance = np.abs(smooth - ndimage.gaussian_filter(render, sigma=(0.7, 0.7, 0))).max(-1)
    outside = ~ndimage.binary_dilation(coverage > 0.05, iterations=1) & ~text
    spread = 1.4826 * np.median(np.abs(distance[outside] - np.median(distance[outside]))) if outside.any() else 0
    odd = outside & (distance > max(0.1, 4 * spread))
    labels, count = ndimage.label(odd)
    if count == 0:
        return 0, np.zeros((size, size), dtype=bool)
    sizes = ndimage.sum(np.ones_like(labels), labels, index=range(1, count + 1))
    pieces = [1 + i for i, s in enumerate(sizes) if s >= 4]
    mask = np.isin(labels, pieces)
    return min(len(pieces), 4), ndimage.binary_dilation(mask, iterations=1)


def _fit_error(pixels: np.ndarray, render: np.ndarray, ignore: np.ndarray) -> float:
    """RMS difference between image and explained render, both smoothed (noise and compression are
    explained by their own parameters), outside clutter and text."""
    a = ndimage.gaussian_filter(pixels, sigma=(1.0, 1.0, 0))
    b = ndimage.gaussian_filter(render, sigma=(1.0, 1.0, 0))
    keep = ~ignore
    if not keep.any():
        return 1.0
    return float(np.sqrt(np.square(a - b).max(-1)[keep].mean()))


@dataclass(frozen=True)
class PanelVotes:
    """The panel's verdict on each pair: +1 (A wins), 0 (tie), -1 (B wins)."""

    appeal: np.ndarray
    faithfulness: np.ndarray


def panel_votes(
    appeal_a: np.ndarray,
    appeal_b: np.ndarray,
    faithful_a: np.ndarray,
    faithful_b: np.ndarray,
    config: PanelConfig,
    identical: np.ndarray | None = None,
) -> PanelVotes:
    """A simulated rater panel (paper, section 4). Appeal: `appeal_raters` raters each see both images
    without the prompt, perceive each one's appeal with Gaussian noise (`appeal_noise`) and vote A, B, or
    tie when the two look within `rater_tie_margin`. Faithfulness: `faithfulness_raters` raters each
    misjudge whether an image shows the prompt with probability `faithfulness_error` and vote A, B, both
    or neither (both and neither are ties). A side wins with a strict majority of the panel; a split panel
    is a tie. A rater shown two `identical` pictures sees one picture twice: a tie on both counts."""
    rng = np.random.default_rng([config.seed, len(appeal_a)])
    n, k = len(appeal_a), config.appeal_raters
    seen_a = appeal_a[:, None] + rng.normal(0, config.appeal_noise, (n, k))
    seen_b = appeal_b[:, None] + rng.normal(0, config.appeal_noise, (n, k))
    gap, margin = seen_a - seen_b, config.rater_tie_margin
    appeal = np.where(gap > margin, 1, np.where(gap < -margin, -1, 0))
    k = config.faithfulness_raters
    flip_a = rng.random((n, k)) < config.faithfulness_error
    flip_b = rng.random((n, k)) < config.faithfulness_error
    says_a = faithful_a[:, None].astype(bool) ^ flip_a
    says_b = faithful_b[:, None].astype(bool) ^ flip_b
    faith = says_a.astype(int) - says_b.astype(int)
    if identical is not None:
        appeal[identical] = 0
        faith[identical] = 0
    return PanelVotes(_majority(appeal), _majority(faith))


def _majority(votes: np.ndarray) -> np.ndarray:
    """+1 or -1 where more than half the raters chose it, else 0."""
    half = votes.shape[1] / 2
    return np.where((votes > 0).sum(1) > half, 1, np.where((votes < 0).sum(1) > half, -1, 0))
