"""The demo dataset: deterministic, captions that match their scenes, a held-out split that holds."""

from __future__ import annotations

import itertools
import random

import numpy as np

from models.demo_data import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIDE,
    SIZES,
    colour_distance,
    held_out_triples,
    random_scene,
    render,
    scenes,
    single_object_scene,
)

_ALIASES = {"center": "centre", "middle": "centre"}


def _positions_named(caption: str) -> str | None:
    """The most specific position a caption names (``top left`` beats ``top``)."""
    named = [p for p in POSITIONS if p in caption] + [p for word, p in _ALIASES.items() if word in caption]
    return max(named, key=len, default=None)


def test_same_seed_same_scenes_and_pixels() -> None:
    first, again, other = list(scenes(3, 20)), list(scenes(3, 20)), list(scenes(4, 20))
    assert first == again
    assert [s.caption for s in first] != [s.caption for s in other]
    for a, b in zip(first[:5], again[:5], strict=True):
        assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))


def test_palette_is_distinct_and_large_enough() -> None:
    assert len(COLOURS) >= 8
    assert min(colour_distance(COLOURS[a], COLOURS[b]) for a, b in itertools.combinations(COLOURS, 2)) >= 95


def test_captions_name_every_object_and_a_single_objects_position() -> None:
    for scene in scenes(0, 400):
        for obj in scene.objects:
            assert f"{obj.colour} {obj.shape}" in scene.caption, scene
        if len(scene.objects) == 1:
            assert _positions_named(scene.caption) == scene.objects[0].position, scene.caption


def test_relations_match_the_layout() -> None:
    pairs = [s for s in scenes(1, 600) if len(s.objects) == 2]
    assert pairs
    for scene in pairs:
        first, second = scene.objects
        if " above " in scene.caption:
            assert first.y < second.y
        elif " below " in scene.caption:
            assert first.y > second.y
        elif " left of " in scene.caption:
            assert first.x < second.x
        else:
            assert " right of " in scene.caption and first.x > second.x


def test_held_out_combinations_never_appear_alone_in_training() -> None:
    held_out = held_out_triples()
    assert 0.05 * 540 <= len(held_out) <= 0.15 * 540
    singles = [s.objects[0] for s in scenes(0, 3000) if len(s.objects) == 1]
    seen = {(o.colour, o.shape, o.position) for o in singles}
    assert not seen & held_out
    # every word still appears in training: held out are combinations, not vocabulary
    assert {o.colour for o in singles} == set(COLOURS)
    assert {o.shape for o in singles} == set(SHAPES)
    assert {o.position for o in singles} == set(POSITIONS)


def test_rendered_object_has_its_colour_at_its_centre() -> None:
    scene = single_object_scene("red", "square", "top left", "blue", size="large")
    image = render(scene)
    assert image.size == (SIDE, SIDE) and image.mode == "RGB"
    obj = scene.objects[0]
    assert image.getpixel((int(obj.x * SIDE), int(obj.y * SIDE))) == COLOURS["red"]
    assert image.getpixel((SIDE - 2, SIDE - 2)) == COLOURS["blue"]
    assert SIZES["small"] < SIZES["large"]


def test_objects_contrast_with_their_background() -> None:
    rng = random.Random(5)
    for _ in range(500):
        scene = random_scene(rng)
        for obj in scene.objects:
            assert colour_distance(COLOURS[obj.colour], scene.background.mean_colour()) >= 90
