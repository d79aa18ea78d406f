"""The evaluation's checks read the generator's own pictures right, and only those."""

from __future__ import annotations

import numpy as np
from PIL import Image

from models.demo_data import Scene, held_out_triples, render, single_object_scene
from models.eval_demo import PLACES, Reading, Score, eval_scenes, placements, read, score


def test_eval_prompts_are_the_held_out_combinations() -> None:
    targets = eval_scenes()
    assert {(s.objects[0].colour, s.objects[0].shape, s.objects[0].position) for s in targets} == held_out_triples()
    assert eval_scenes(5) == targets[:5]
    assert all(s.background.kind == "solid" for s in targets)


def test_rendered_ground_truth_scores_every_check() -> None:
    result = score([(s, render(s)) for s in eval_scenes()])
    assert (result.colour, result.position, result.shape) == (result.total,) * 3
    assert result.meets_targets()


def test_checks_survive_noise_and_a_resize_round_trip() -> None:
    rng = np.random.default_rng(0)
    pairs = []
    for scene in eval_scenes(24):
        image = render(scene).resize((256, 256), Image.Resampling.LANCZOS).resize((64, 64), Image.Resampling.BOX)
        noisy = np.clip(np.asarray(image, dtype=float) + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
        pairs.append((scene, Image.fromarray(noisy)))
    result = score(pairs)
    assert result.rate("colour") >= 0.95 and result.rate("position") >= 0.95 and result.rate("shape") >= 0.9


def test_a_blank_image_reads_as_nothing_and_scores_zero() -> None:
    blank = Image.new("RGB", (64, 64), (30, 70, 220))
    assert read(blank) == Reading(None, None, None)
    result = score([(eval_scenes(1)[0], blank)])
    assert result == Score(0, 0, 0, 1) and not result.meets_targets()
    assert "MISSED" in result.table()


def test_placements_read_where_each_drawing_puts_the_object() -> None:
    def ground_truth(batch: list[Scene]) -> list[Image.Image]:
        return [render(scene) for scene in batch]

    def always_centre(batch: list[Scene]) -> list[Image.Image]:  # a model deaf to the words for places
        return [render(single_object_scene("red", "circle", "centre", "white")) for _ in batch]

    assert placements(ground_truth, seeds=2) == {place: [place, place] for place in PLACES}
    assert all(readings == ["centre", "centre"] for readings in placements(always_centre, seeds=2).values())
