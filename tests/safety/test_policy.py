from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from safety.integrity import IntegrityStage
from safety.policy import CheckContext, Policy
from safety.verdict import HARD_CATEGORIES, UNAVAILABLE_REASON, Decision, Verdict, appealable, combine, for_appeal


@dataclass(frozen=True)
class Context:
    prompt: str = "a cat"
    guild_id: str | None = "g"
    strictness: str = "standard"
    allow_suggestive: bool = False
    width: int = 32
    height: int = 32


def noise(seed: int = 0, size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


class Fixed:
    def __init__(self, name: str, decision: Decision, category: str | None = None) -> None:
        self.name = name
        self.decision = decision
        self.category = category

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        return [
            Verdict(
                self.decision, self.name, f"{self.name} says {self.decision}", self.category, {f"{self.name}.p": 0.5}
            )
            for _ in images
        ]


class Raising:
    name = "broken"

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        raise RuntimeError("weights missing")


class Short:
    name = "short"

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        return []


def test_most_severe_stage_decides_and_scores_are_kept() -> None:
    policy = Policy([Fixed("a", Decision.ALLOW), Fixed("b", Decision.FLAG, "sexual"), Fixed("c", Decision.ALLOW)])
    [verdict] = policy.check([noise()], Context())
    assert verdict.decision is Decision.FLAG and verdict.stage == "b" and verdict.category == "sexual"
    assert set(verdict.scores) == {"a.p", "b.p", "c.p"}


def test_allow_when_every_stage_allows() -> None:
    [verdict] = Policy([Fixed("a", Decision.ALLOW)]).check([noise()], Context())
    assert verdict.decision is Decision.ALLOW and verdict.stage == "policy"


@pytest.mark.parametrize("bad", [Raising(), Short()])
def test_a_failing_stage_blocks_every_image(bad: Raising | Short) -> None:
    verdicts = Policy([Fixed("a", Decision.ALLOW), bad]).check([noise(1), noise(2)], Context())
    assert [v.decision for v in verdicts] == [Decision.BLOCK, Decision.BLOCK]
    assert all(v.reason == UNAVAILABLE_REASON and v.stage == bad.name for v in verdicts)


class Slow:
    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        time.sleep(self.seconds)
        return [Verdict(Decision.ALLOW, self.name, "ok") for _ in images]


def test_a_stage_that_times_out_blocks_and_does_not_hold_up_the_next_check() -> None:
    slow = Slow(1.0)
    policy = Policy([Fixed("a", Decision.ALLOW), slow], timeout=0.1)
    [verdict] = policy.check([noise()], Context())
    assert verdict.decision is Decision.BLOCK and verdict.stage == "slow" and verdict.reason == UNAVAILABLE_REASON
    slow.seconds = 0.0
    [verdict] = policy.check([noise()], Context())  # a fresh runner, not queued behind the stuck call
    assert verdict.decision is Decision.ALLOW
    with pytest.raises(ValueError, match="timeout must be positive"):
        Policy([slow], timeout=0)


def test_an_unavailable_stage_blocks() -> None:
    [verdict] = Policy([Fixed("a", Decision.ALLOW)], unavailable=["nsfw"]).check([noise()], Context())
    assert verdict.decision is Decision.BLOCK and verdict.stage == "nsfw"


def test_a_policy_without_stages_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        Policy([])


def test_combine_nothing_blocks() -> None:
    assert combine([]).decision is Decision.BLOCK


def test_verdict_is_immutable() -> None:
    v = Verdict(Decision.ALLOW, "s", "ok", scores={"x": 1.0})
    with pytest.raises(TypeError):
        v.scores["x"] = 2.0  # type: ignore[index]


def test_integrity_stage() -> None:
    stage = IntegrityStage()
    flat = Image.new("RGB", (32, 32), (0, 0, 0))
    wrong_size = noise(size=(16, 32))
    grey = noise().convert("L")
    verdicts = stage.check([noise(), flat, wrong_size, grey], Context())
    assert [v.decision for v in verdicts] == [Decision.ALLOW, Decision.BLOCK, Decision.BLOCK, Decision.BLOCK]
    assert verdicts[1].category == "blank" and verdicts[2].category == "malformed"
    assert verdicts[0].scores["integrity.std"] > 50


# -- appeals ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Appealed(Context):
    appealed: bool = True


def test_hard_categories_cannot_be_appealed() -> None:
    assert set(HARD_CATEGORIES) == {
        "minors", "protected_person", "protected_identity", "protected_name", "unavailable", "malformed",
    }  # fmt: skip
    for category in HARD_CATEGORIES:
        assert not appealable(category)
    assert appealable(None)
    for category in ("sexual", "sexual_explicit", "gore", "hate", "self_harm", "blank"):
        assert appealable(category)


def test_for_appeal_turns_only_appealable_blocks_into_flags() -> None:
    gore = Verdict(Decision.BLOCK, "nsfw", "graphic violence", "gore", {"nsfw.gore": 0.9}, {"nsfw": "v1"})
    flagged = for_appeal(gore)
    assert (flagged.decision, flagged.stage, flagged.category) == (Decision.FLAG, "nsfw", "gore")
    assert flagged.reason == "graphic violence (on appeal)"
    assert dict(flagged.scores) == {"nsfw.gore": 0.9} and dict(flagged.model_versions) == {"nsfw": "v1"}
    minors = Verdict(Decision.BLOCK, "nsfw", "minors", "minors")
    assert for_appeal(minors) is minors
    assert for_appeal(Verdict.unavailable("nsfw", "weights missing")).decision is Decision.BLOCK
    for untouched in (Verdict(Decision.FLAG, "nsfw", "r", "sexual"), Verdict(Decision.ALLOW, "policy", "ok")):
        assert for_appeal(untouched) is untouched


def test_of_equally_severe_blocks_a_hard_category_decides() -> None:
    gore, minors = Fixed("a", Decision.BLOCK, "gore"), Fixed("b", Decision.BLOCK, "minors")
    assert combine(v for s in (gore, minors) for v in s.check([noise()], Context())).category == "minors"
    [verdict] = Policy([gore, minors]).check([noise()], Context())
    assert (verdict.decision, verdict.category, verdict.stage) == (Decision.BLOCK, "minors", "b")
    # Among appealable blocks (and among flags) stage order still decides.
    [first] = Policy([gore, Fixed("c", Decision.BLOCK, "hate")]).check([noise()], Context())
    assert first.category == "gore"


def test_on_an_appealed_rerun_appealable_blocks_become_flags() -> None:
    policy = Policy([Fixed("a", Decision.BLOCK, "gore"), Fixed("b", Decision.ALLOW)])
    [normal] = policy.check([noise()], Context())
    [rerun] = policy.check([noise()], Appealed())
    assert normal.decision is Decision.BLOCK
    assert (rerun.decision, rerun.category, rerun.reason) == (Decision.FLAG, "gore", "a says block (on appeal)")
    assert dict(rerun.scores) == {"a.p": 0.5, "b.p": 0.5}
    [not_appealed] = policy.check([noise()], Appealed(appealed=False))
    assert not_appealed.decision is Decision.BLOCK


@pytest.mark.parametrize(
    "stages",
    [
        [Fixed("a", Decision.BLOCK, "minors")],
        [Fixed("a", Decision.BLOCK, "gore"), Fixed("b", Decision.BLOCK, "minors")],  # hidden behind an appealable one
        [Fixed("a", Decision.BLOCK, "gore"), Raising()],  # a check that could not run
    ],
)
def test_on_an_appealed_rerun_hard_blocks_stay_blocks(stages: list[Fixed | Raising]) -> None:
    [verdict] = Policy(stages).check([noise()], Appealed())
    assert verdict.decision is Decision.BLOCK and not appealable(verdict.category)
