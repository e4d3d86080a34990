"""The ground-truth rater panel: scenes explained from pixels, checked against the scenes that made them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from photogenic.config import ConfigError, PanelConfig, WorldConfig, load_config
from photogenic.evaluate import benchmark_prompts, load_prompts, sampling_seeds
from photogenic.panel import _majority, explain, panel_votes
from photogenic.train.diffusion import validation_jobs
from photogenic.world import Scene, oracle_appeal, render_scene, scene_at

PANEL = PanelConfig()


def _scene(**changes: object) -> Scene:
    base = Scene("star", "red", "sky", 0.4, 0.55, 0.3, 10, 1.0, 0.5, 225, 0.9, 0.8, 0, 0, 0, 100, "", True, 7)
    return dataclasses.replace(base, **changes)


def test_clean_renders_are_explained_as_the_scenes_that_made_them() -> None:
    """Photogenic renders of a world no other stage uses: concepts exact, geometry and light close, and the
    explained scene's appeal is the true one's."""
    world = WorldConfig(seed=9_999, photogenic_rate=1.0, duplicate_rate=0.0)
    scenes = [scene_at(world, i) for i in range(30)]
    found = [explain(render_scene(s, 32), PANEL) for s in scenes]
    assert all(f.explained for f in found), [f.fit_error for f in found]
    for name in ("shape", "color", "background"):
        assert (
            np.mean([getattr(f.scene, name) == getattr(s, name) for f, s in zip(found, scenes, strict=True)]) >= 0.95
        ), name
    for name, tolerance in (("cx", 0.01), ("cy", 0.01), ("radius", 0.01), ("exposure", 0.03), ("saturation", 0.03)):
        error = np.mean([abs(getattr(f.scene, name) - getattr(s, name)) for f, s in zip(found, scenes, strict=True)])
        assert error < tolerance, (name, error)
    appeal = np.array([oracle_appeal(s)[0] for s in scenes])
    assert np.abs(np.array([f.appeal for f in found]) - appeal).mean() < 0.02


@pytest.mark.parametrize(
    ("defect", "changes", "seen"),
    [
        ("text", {"text": "SALE 50%"}, lambda s: bool(s.text)),
        ("noise", {"noise": 0.05}, lambda s: 0.03 < s.noise < 0.07),
        ("compression", {"jpeg_quality": 40}, lambda s: s.jpeg_quality < 60),
        ("blur", {"blur": 0.9}, lambda s: s.blur >= 0.6),
        ("under-exposure", {"exposure": 0.6}, lambda s: abs(s.exposure - 0.6) < 0.05),
        ("clutter", {"clutter": 3, "detail_seed": 2}, lambda s: s.clutter >= 2),
    ],
)
def test_each_defect_is_seen_and_costs_appeal(defect: str, changes: dict, seen) -> None:
    clean = explain(render_scene(_scene(), 32), PANEL)
    degraded = explain(render_scene(_scene(**changes), 32), PANEL)
    assert clean.scene.shape == degraded.scene.shape == "star"
    assert seen(degraded.scene), (defect, degraded.scene)
    assert not seen(clean.scene) or defect == "under-exposure"
    assert degraded.appeal < clean.appeal - 0.05, (defect, clean.appeal, degraded.appeal)


def test_static_and_empty_pictures_explain_nothing() -> None:
    """An image of no scene (static, or a blank frame) is a defect, and shows no prompt."""
    rng = np.random.default_rng(0)
    static = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    blank = np.full((32, 32, 3), 128, dtype=np.uint8)
    for image in (static, blank):
        found = explain(image, PANEL)
        assert not found.explained
        assert not found.shows(found.scene.shape, found.scene.color, found.scene.background)
    clean = explain(render_scene(_scene(), 32), PANEL)
    assert clean.explained and clean.shows("star", "red", None) and not clean.shows("circle", None, None)


def test_explain_names_what_is_wrong_with_its_input() -> None:
    with pytest.raises(ValueError, match=r"square RGB uint8 image.*\(32, 24, 3\)"):
        explain(np.zeros((32, 24, 3), dtype=np.uint8), PANEL)


def test_the_panel_votes_by_strict_majority() -> None:
    assert list(_majority(np.array([[1, 1, -1, -1, 0], [1, 1, 1, -1, -1], [-1, -1, -1, 0, 0], [1, 0, 0, 0, 0]]))) == [
        0,
        1,
        -1,
        0,
    ]
    quiet = dataclasses.replace(PANEL, appeal_noise=0.0, faithfulness_error=0.0)
    votes = panel_votes(
        np.array([0.9, 0.5, 0.50, 0.7]),
        np.array([0.4, 0.9, 0.51, 0.7]),
        np.array([True, False, True, True]),
        np.array([False, True, True, False]),
        quiet,
    )
    assert list(votes.appeal) == [1, -1, 0, 0] and list(votes.faithfulness) == [1, -1, 0, 1]
    # noisy raters split on images of equal appeal, but two identical pictures are one picture seen twice
    n = 400
    same = np.full(n, 0.6)
    noisy = panel_votes(same, same, np.ones(n, bool), np.ones(n, bool), PANEL)
    assert (noisy.appeal != 0).any()
    identical = panel_votes(same, same, np.ones(n, bool), np.ones(n, bool), PANEL, np.ones(n, bool))
    assert not identical.appeal.any() and not identical.faithfulness.any()


def test_dev_and_test_splits_are_disjoint_and_early_stopping_sees_only_dev() -> None:
    config = load_config("tiny")
    test, dev = benchmark_prompts(config, "test"), benchmark_prompts(config, "dev")
    assert len(test) == len(dev) == 96 and not {p.text for p in test} & {p.text for p in dev}
    assert not set(sampling_seeds(config, "test")) & set(sampling_seeds(config, "dev"))
    jobs = validation_jobs(config)
    assert len(jobs) == 16 and {t for t, _ in jobs} <= {p.text for p in dev if not p.held_out}
    assert all("star" not in t for t, _ in jobs) and all(s in sampling_seeds(config, "dev") for _, s in jobs)
    with pytest.raises(ConfigError, match="unknown benchmark split 'train'"):
        benchmark_prompts(config, "train")


def test_prompt_files_in_every_format(tmp_path: Path) -> None:
    config = load_config("tiny")
    (tmp_path / "p.txt").write_text("a red star on a sky background\n\n  a blue ring  \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a green cross", "category": "shapes"}\n{"text": "snow"}\n')
    (tmp_path / "p.csv").write_text("\ufeffPrompt,Category\na pink circle,Colors\n")
    (tmp_path / "parti.tsv").write_text("Prompt\tCategory\tChallenge\tNote\na yellow square\tAbstract\tBasic\t\n")
    txt = load_prompts(tmp_path / "p.txt", config)
    assert [p.text for p in txt] == ["a red star on a sky background", "a blue ring"]
    assert (txt[0].shape, txt[0].color, txt[0].background, txt[0].held_out) == ("star", "red", "sky", True)
    assert (txt[1].shape, txt[1].background) == ("ring", None)
    jsonl = load_prompts(tmp_path / "p.jsonl", config)
    assert [(p.category, p.shape, p.background) for p in jsonl] == [("shapes", "cross", None), ("", None, "snow")]
    assert [(p.text, p.category) for p in load_prompts(tmp_path / "p.csv", config)] == [("a pink circle", "Colors")]
    parti = load_prompts(tmp_path / "parti.tsv", config)
    assert [(p.text, p.category, p.shape) for p in parti] == [("a yellow square", "Abstract", "square")]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.txt", None, "no such file"),
        ("empty.txt", "\n\n", "no prompts"),
        ("bad.jsonl", '{"prompt": "a red star"}\n{oops\n', "line 2: not JSON"),
        ("list.jsonl", "[1, 2]\n", "line 1: not a JSON object"),
        ("blank.jsonl", '{"prompt": "  "}\n', "line 1: the prompt is empty"),
        ("cols.csv", "caption_text,kind\nx,y\n", r"no prompt column; columns are \['caption_text', 'kind'\]"),
        ("gap.csv", 'prompt\na red star\n""\n', "line 3: the prompt is empty"),
    ],
)
def test_bad_prompt_files_are_named_with_their_line(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_prompts(tmp_path / name, load_config("tiny"))
    assert name in str(info.value)


def test_an_image_is_explained_the_same_from_pil_or_array() -> None:
    image = render_scene(_scene(noise=0.03, jpeg_quality=40), 32)
    a, b = explain(image, PANEL), explain(np.asarray(image), PANEL)
    assert a == b
    assert isinstance(image, Image.Image)


def test_explaining_in_worker_processes_gives_the_same_explanations_in_order() -> None:
    """The evaluation explains its images over `data.workers` processes, in blocks: the same explanations,
    in the same order, as one process, and a progress count of every image."""
    from photogenic.panel import _EXPLAIN_BLOCK, explain_all
    from photogenic.progress import Progress

    world = WorldConfig(seed=4_321)
    images = [render_scene(scene_at(world, i), 32) for i in range(_EXPLAIN_BLOCK + 9)]  # a partial last block
    one = explain_all(images, PANEL)
    progress = Progress("explaining", len(images), "image", enabled=False)
    two = explain_all(images, PANEL, workers=2, progress=progress)
    assert two == one and len(one) == len(images)
    assert progress.done == len(images)
