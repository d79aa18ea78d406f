"""The demo model's world: procedural scenes of simple shapes, their captions and their pictures.

Everything is a pure function of a seed, so the training set, the held-out split and the
evaluation prompts are reproducible anywhere, with nothing downloaded. A scene is one to three
objects (a :data:`SHAPES` kind in a :data:`COLOURS` colour, small or large, at one of nine
:data:`POSITIONS`) on a background (a solid colour, a two-colour gradient, a day sky with clouds,
a night sky with stars, or grass under a sky). Pictures are drawn at 4x and box-filtered down, so
edges are anti-aliased the way a camera would see them.

The held-out split (:func:`held_out_triples`) names (colour, shape, position) combinations that a
training scene never shows as a single object; the evaluation asks for exactly those.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

SIDE = 64  # the model's native size
_SCALE = 4  # drawn at 4x, then box-filtered down: anti-aliasing

# Named colours, at least ~95 apart (RGB distance) from each other, so a colour is never a guess.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "orange": (250, 130, 0),
    "yellow": (250, 225, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (130, 50, 180),
    "pink": (250, 130, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "brown": (120, 70, 30),
}
SHAPES = ("circle", "square", "triangle", "star", "heart", "ring")
SIZES = {"small": 0.14, "large": 0.23}  # radius as a fraction of the side
# Nine anchors on a 3x3 grid: (column, row) centres as fractions of the side.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top": (0.5, 0.25),
    "top right": (0.75, 0.25),
    "left": (0.25, 0.5),
    "centre": (0.5, 0.5),
    "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom": (0.5, 0.75),
    "bottom right": (0.75, 0.75),
}
_POSITION_WORDS = {
    "top left": ("at the top left", "in the top left corner", "top left"),
    "top": ("at the top", "at the top", "top"),
    "top right": ("at the top right", "in the top right corner", "top right"),
    "left": ("on the left", "at the left", "left"),
    "centre": ("in the centre", "in the middle", "center"),
    "right": ("on the right", "at the right", "right"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "bottom left"),
    "bottom": ("at the bottom", "at the bottom", "bottom"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "bottom right"),
}
# Textured backgrounds: (phrases, mean colour used to keep objects visible).
_SKIES: dict[str, tuple[tuple[str, ...], tuple[int, int, int]]] = {
    "day": (("day sky with clouds", "blue sky with clouds", "cloudy sky"), (130, 180, 240)),
    "night": (("night sky", "night sky with stars", "starry night"), (20, 25, 65)),
    "grass": (("grass under a blue sky", "green meadow", "grassy field"), (90, 160, 120)),
}
_RELATIONS = {
    "above": ((1, 0), (1, 2)),
    "below": ((1, 2), (1, 0)),
    "left of": ((0, 1), (2, 1)),
    "right of": ((2, 1), (0, 1)),
}
_MIN_CONTRAST = 90.0  # an object's colour is at least this far from the background's (mean) colour
HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True)
class SceneObject:
    """One shape: what it is, where its centre is (fractions of the side) and how big it is."""

    shape: str
    colour: str
    size: str
    position: str
    x: float
    y: float


@dataclass(frozen=True)
class Background:
    """What is behind the objects.

    ``kind`` is ``solid``, ``gradient``, ``day``, ``night`` or ``grass``; ``colours`` names the colours
    of a solid or gradient background.
    """

    kind: str
    colours: tuple[str, ...] = ()
    vertical: bool = True
    seed: int = 0  # texture seed (clouds, stars, grass)

    def phrase(self, rng: random.Random) -> str:
        if self.kind == "solid":
            return rng.choice((f"{self.colours[0]} background", f"plain {self.colours[0]} background"))
        if self.kind == "gradient":
            first, second = self.colours
            return rng.choice((f"{first} to {second} gradient", f"{first} and {second} gradient background"))
        return rng.choice(_SKIES[self.kind][0])

    def mean_colour(self) -> np.ndarray:
        if self.kind in _SKIES:
            return np.array(_SKIES[self.kind][1], dtype=float)
        mean: np.ndarray = np.asarray([COLOURS[c] for c in self.colours], dtype=float).mean(axis=0)
        return mean


@dataclass(frozen=True)
class Scene:
    """A background, its objects, and one caption that describes them."""

    background: Background
    objects: tuple[SceneObject, ...]
    caption: str


def colour_distance(a: tuple[int, int, int] | np.ndarray, b: tuple[int, int, int] | np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)))


def nearest_colour(rgb: np.ndarray) -> str:
    """The name of the palette colour nearest to ``rgb``."""
    return min(COLOURS, key=lambda name: colour_distance(COLOURS[name], rgb))


def nearest_position(x: float, y: float) -> str:
    """The name of the anchor nearest to a point (fractions of the side)."""
    return min(POSITIONS, key=lambda name: math.dist(POSITIONS[name], (x, y)))


@cache
def held_out_triples(seed: int = 0) -> frozenset[tuple[str, str, str]]:
    """(colour, shape, position) combinations no training scene shows as a single object.

    Every colour, shape and position still appears in training with the others, so the held-out
    combinations test composition, not new words.
    """
    triples = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]
    random.Random(f"held-out-{seed}").shuffle(triples)
    return frozenset(triples[: round(len(triples) * HELD_OUT_FRACTION)])


def _object_colours(background: Background, exclude: set[str]) -> list[str]:
    mean = background.mean_colour()
    allowed = [
        c
        for c in COLOURS
        if c not in exclude and c not in background.colours and colour_distance(COLOURS[c], mean) >= _MIN_CONTRAST
    ]
    if background.kind in {"solid", "gradient"}:  # every stop must contrast, not just the mean
        allowed = [
            c
            for c in allowed
            if all(colour_distance(COLOURS[c], COLOURS[b]) >= _MIN_CONTRAST for b in background.colours)
        ]
    return allowed


def _random_background(rng: random.Random) -> Background:
    roll = rng.random()
    if roll < 0.5:
        return Background("solid", (rng.choice(list(COLOURS)),))
    if roll < 0.7:
        first, second = rng.sample(list(COLOURS), 2)
        return Background("gradient", (first, second), vertical=rng.random() < 0.6)
    return Background(rng.choice(list(_SKIES)), seed=rng.randrange(2**31))


def _place(rng: random.Random, position: str, size: str) -> tuple[float, float]:
    x, y = POSITIONS[position]
    jitter = 0.05 if size == "small" else 0.02
    return x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter)


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _describe(obj: SceneObject, rng: random.Random, *, size: bool) -> str:
    return _a(f"{obj.size} {obj.colour} {obj.shape}" if size else f"{obj.colour} {obj.shape}")


def _single_caption(obj: SceneObject, bg: str, rng: random.Random) -> str:
    where = rng.choice(_POSITION_WORDS[obj.position])
    bare = where.removeprefix("at the ").removeprefix("in the ").removeprefix("on the ")
    where_phrase = where if " " in where and where.split()[0] in {"at", "in", "on"} else f"at the {where}"
    if where == "center":
        where_phrase = "in the center"
    thing = _describe(obj, rng, size=rng.random() < 0.6)
    templates = (
        f"{thing} {where_phrase} on {_a(bg)}",
        f"{thing} {where_phrase}, {bg}",
        f"{bg} with {thing} {where_phrase}",
        f"{obj.colour} {obj.shape}, {bare}, {bg}",
        f"{thing} on {_a(bg)}, {where_phrase}",
    )
    return rng.choice(templates)


def _single(rng: random.Random, held_out: frozenset[tuple[str, str, str]]) -> Scene:
    while True:
        background = _random_background(rng)
        shape, position, size = rng.choice(SHAPES), rng.choice(list(POSITIONS)), rng.choice(list(SIZES))
        colour = rng.choice(_object_colours(background, set()))
        if (colour, shape, position) not in held_out:
            break
    x, y = _place(rng, position, size)
    obj = SceneObject(shape, colour, size, position, x, y)
    return Scene(background, (obj,), _single_caption(obj, background.phrase(rng), rng))


def _pair(rng: random.Random) -> Scene:
    background = _random_background(rng)
    relation = rng.choice(list(_RELATIONS))
    cells = _RELATIONS[relation]
    shift = rng.choice((0, 0, -1, 1))  # mostly through the centre; sometimes along an edge
    colours = rng.sample(_object_colours(background, set()), 2)
    objects = []
    for (col, row), colour in zip(cells, colours, strict=True):
        col, row = (col, row + shift) if relation in {"left of", "right of"} else (col + shift, row)
        position = next(name for name, xy in POSITIONS.items() if xy == (0.25 + 0.25 * col, 0.25 + 0.25 * row))
        size = rng.choice(list(SIZES)) if rng.random() < 0.3 else "small"
        x, y = _place(rng, position, size)
        objects.append(SceneObject(rng.choice(SHAPES), colour, size, position, x, y))
    first, second = (_describe(o, rng, size=False) for o in objects)
    bg = background.phrase(rng)
    caption = rng.choice(
        (
            f"{first} {relation} {second}, {bg}",
            f"{first} {relation} {second} on {_a(bg)}",
            f"{bg} with {first} {relation} {second}",
        )
    )
    return Scene(background, tuple(objects), caption)


def _triple(rng: random.Random) -> Scene:
    background = _random_background(rng)
    positions = rng.sample(list(POSITIONS), 3)
    positions.sort(key=lambda p: (POSITIONS[p][0], POSITIONS[p][1]))  # listed left to right
    colours = rng.sample(_object_colours(background, set()), 3)
    objects = tuple(
        SceneObject(rng.choice(SHAPES), colour, "small", position, *_place(rng, position, "small"))
        for position, colour in zip(positions, colours, strict=True)
    )
    names = [_describe(o, rng, size=False) for o in objects]
    caption = f"{names[0]}, {names[1]} and {names[2]} on {_a(background.phrase(rng))}"
    return Scene(background, objects, caption)


def random_scene(rng: random.Random, held_out: frozenset[tuple[str, str, str]] | None = None) -> Scene:
    """One training scene: 60 % one object, 30 % two (with a relation), 10 % three."""
    held_out = held_out_triples() if held_out is None else held_out
    roll = rng.random()
    if roll < 0.6:
        return _single(rng, held_out)
    return _pair(rng) if roll < 0.9 else _triple(rng)


def scenes(seed: int, count: int) -> Iterator[Scene]:
    """``count`` training scenes, the same for the same seed."""
    rng = random.Random(f"scenes-{seed}")
    held_out = held_out_triples()
    for _ in range(count):
        yield random_scene(rng, held_out)


def single_object_scene(colour: str, shape: str, position: str, background: str, *, size: str = "large") -> Scene:
    """A solid-background, one-object scene with a fixed caption (what the evaluation asks for)."""
    x, y = POSITIONS[position]
    obj = SceneObject(shape, colour, size, position, x, y)
    where = {"centre": "in the centre", "left": "on the left", "right": "on the right"}.get(
        position, f"at the {position}"
    )
    caption = f"{_describe(obj, random.Random(0), size=True)} {where} on {_a(background)} background"
    return Scene(Background("solid", (background,)), (obj,), caption)


# --- drawing -----------------------------------------------------------------------------------


def _star_points(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _heart_points(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for i in range(64):
        t = 2 * math.pi * i / 64
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((cx + r * x / 16.5, cy - r * (y + 2.5) / 16.5))
    return points


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, ...] | int
) -> None:
    """Draw one shape centred at (cx, cy) with "radius" ``r`` (pixels of ``draw``'s image)."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)], fill=fill)
    elif shape == "star":
        draw.polygon(_star_points(cx, cy + r * 0.1, r * 1.1), fill=fill)
    elif shape == "heart":
        draw.polygon(_heart_points(cx, cy, r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(1, round(r * 0.38)))
    else:
        raise ValueError(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")


def _gradient(first: tuple[int, int, int], second: tuple[int, int, int], side: int, vertical: bool) -> np.ndarray:
    t = np.linspace(0.0, 1.0, side)[:, None] if vertical else np.linspace(0.0, 1.0, side)[None, :]
    t = np.broadcast_to(t, (side, side))[..., None]
    return (np.array(first, dtype=float) * (1 - t) + np.array(second, dtype=float) * t).astype(np.uint8)


def _background(background: Background, side: int) -> Image.Image:
    rng = random.Random(background.seed)
    if background.kind == "solid":
        return Image.new("RGB", (side, side), COLOURS[background.colours[0]])
    if background.kind == "gradient":
        first, second = (COLOURS[c] for c in background.colours)
        return Image.fromarray(_gradient(first, second, side, background.vertical))
    if background.kind == "night":
        image = Image.fromarray(_gradient((8, 10, 40), (35, 45, 100), side, True))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randrange(12, 30)):
            x, y, r = rng.uniform(0, side), rng.uniform(0, side), rng.uniform(0.4, 1.0) * _SCALE
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 230))
        return image
    image = Image.fromarray(_gradient((70, 130, 230), (170, 210, 250), side, True))
    draw = ImageDraw.Draw(image)
    if background.kind == "day":
        for _ in range(rng.randrange(2, 5)):
            x, y = rng.uniform(0, side), rng.uniform(0, side * 0.9)
            for _ in range(4):
                w, h = rng.uniform(0.08, 0.16) * side, rng.uniform(0.05, 0.09) * side
                dx, dy = rng.uniform(-0.08, 0.08) * side, rng.uniform(-0.03, 0.03) * side
                draw.ellipse((x + dx - w, y + dy - h, x + dx + w, y + dy + h), fill=(250, 250, 252))
        return image
    horizon = round(side * rng.uniform(0.55, 0.7))  # grass
    draw.rectangle((0, horizon, side, side), fill=(60, 150, 50))
    for _ in range(120):
        x, y = rng.uniform(0, side), rng.uniform(horizon, side)
        shade = rng.choice(((40, 120, 35), (90, 180, 70)))
        draw.line((x, y, x + rng.uniform(-2, 2) * _SCALE, y - rng.uniform(2, 5) * _SCALE), fill=shade, width=_SCALE)
    return image


def render(scene: Scene, side: int = SIDE) -> Image.Image:
    """The scene's picture, ``side`` x ``side`` RGB, anti-aliased."""
    big = side * _SCALE
    image = _background(scene.background, big)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_shape(draw, obj.shape, obj.x * big, obj.y * big, SIZES[obj.size] * big, COLOURS[obj.colour])
    return image.resize((side, side), Image.Resampling.BOX)


def shape_mask(shape: str, side: int) -> np.ndarray:
    """A centred, anti-aliased mask (0..1, float) of ``shape`` filling a ``side`` x ``side`` box."""
    big = side * _SCALE
    image = Image.new("L", (big, big), 0)
    draw_shape(ImageDraw.Draw(image), shape, big / 2, big / 2, big * 0.42, 255)
    return np.asarray(image.resize((side, side), Image.Resampling.BOX), dtype=np.float32) / 255.0
