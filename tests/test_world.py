"""The toy world: deterministic, captions that name what is drawn, a hidden oracle that separates the needles."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from photogenic.cli import main
from photogenic.config import WorldConfig
from photogenic.world import BACKGROUNDS, COLORS, SHAPES, iter_world, render_sample, scene_at


def test_samples_are_a_pure_function_of_seed_and_index() -> None:
    world = WorldConfig(num_samples=50, seed=3)
    a = render_sample(world, 17)
    b = list(iter_world(world, 17, 18))[0]
    assert a.image == b.image and a.caption == b.caption and a.oracle == b.oracle
    other = render_sample(WorldConfig(num_samples=50, seed=4), 17)
    assert other.image != a.image


def test_images_have_the_configured_size() -> None:
    for size in (32, 64):
        sample = render_sample(WorldConfig(image_size=size), 0)
        image = Image.open(io.BytesIO(sample.image))
        assert image.format == "PNG" and image.size == (size, size) and image.mode == "RGB"


def test_world_covers_the_concepts_and_the_needles_are_rare() -> None:
    world = WorldConfig(num_samples=3000, seed=1, photogenic_rate=0.01)
    samples = list(iter_world(world))
    shapes = {s.oracle["shape"] for s in samples}
    colors = {s.oracle["color"] for s in samples}
    assert shapes == set(SHAPES) and len(SHAPES) >= 6
    assert colors == set(COLORS) and len(COLORS) >= 8
    assert {s.oracle["background"] for s in samples} == set(BACKGROUNDS)
    photogenic = np.array([s.oracle["photogenic"] for s in samples])
    assert 0.004 < photogenic.mean() < 0.02
    appeal = np.array([s.oracle["appeal"] for s in samples])
    assert ((appeal >= 0) & (appeal <= 1)).all()
    # The oracle separates the needles from the haystack: every needle beats the haystack's median,
    # and nearly every needle beats its 90th percentile.
    assert appeal[photogenic].min() > np.median(appeal[~photogenic])
    assert (appeal[photogenic] > np.percentile(appeal[~photogenic], 90)).mean() > 0.9


def test_clean_captions_name_subject_color_and_background() -> None:
    world = WorldConfig(num_samples=200, caption_noise=0.0)
    for sample in iter_world(world):
        o = sample.oracle
        assert o["clean_caption"].endswith(
            f"{o['shape']} on {'an' if o['background'][0] in 'aeiou' else 'a'} {o['background']} background"
        )
        assert o["color"] in sample.caption and o["shape"] in sample.caption and o["background"] in sample.caption


def test_web_caption_noise_happens_at_its_rate() -> None:
    world = WorldConfig(num_samples=1000, caption_noise=0.5, seed=2)
    samples = list(iter_world(world))
    faithful = [s.oracle["color"] in s.caption and s.oracle["shape"] in s.caption for s in samples]
    assert 0.55 < float(np.mean(faithful)) < 0.85  # about half are noisy, some noise keeps both words


def test_duplicates_copy_an_earlier_scene() -> None:
    world = WorldConfig(num_samples=600, duplicate_rate=0.05, seed=5)
    dups = [s for s in iter_world(world) if s.oracle["duplicate_of"] >= 0]
    assert 10 < len(dups) < 60
    for dup in dups[:5]:
        source = scene_at(world, dup.oracle["duplicate_of"])
        assert (source.shape, source.color, source.background) == (
            dup.oracle["shape"],
            dup.oracle["color"],
            dup.oracle["background"],
        )


def test_world_sheet_command_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(main, ["world", "sheet", "--preset", "tiny", "-o", str(out), "--columns", "4"])
    assert result.exit_code == 0, result.output
    sheet = Image.open(out)
    assert sheet.format == "PNG" and sheet.width > 4 * 32
