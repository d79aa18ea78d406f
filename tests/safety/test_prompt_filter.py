from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safety.normalize import normalize
from safety.prompt_filter import (
    ALLOW_REASON,
    HARD_BLOCK_REASON,
    HARD_BLOCK_SCORE,
    PeopleMention,
    PromptCategory,
    PromptFilter,
    PromptRules,
    reason_for,
)
from safety.verdict import Decision

A, F, B = Decision.ALLOW, Decision.FLAG, Decision.BLOCK
SEXUAL, MINORS, GORE, HATE, SELF_HARM = (
    PromptCategory.SEXUAL,
    PromptCategory.MINORS,
    PromptCategory.GORE,
    PromptCategory.HATE,
    PromptCategory.SELF_HARM,
)
ALL_REASONS = {reason_for(d, c) for d in (F, B) for c in PromptCategory} | {ALLOW_REASON, HARD_BLOCK_REASON}


@dataclass(frozen=True)
class Context:
    strictness: str = "standard"
    allow_suggestive: bool = False


@pytest.fixture(scope="module")
def prompt_filter() -> PromptFilter:
    return PromptFilter.default()


# Disguised prompts the filter must catch at standard strictness, with the category it reports.
EVASIONS: list[tuple[str, PromptCategory]] = [
    ("n00dz", SEXUAL),
    ("p0rn", SEXUAL),
    ("pr0n pics", SEXUAL),
    ("n.u.d.e", SEXUAL),
    ("n u d e", SEXUAL),
    ("a n.u.d.e woman", SEXUAL),  # the article must not glue onto the spelled-out word
    ("a n u d e woman", SEXUAL),
    ("n-u-d-e", SEXUAL),
    ("n_u_d_e", SEXUAL),
    ("p*o*r*n", SEXUAL),
    ("s-e-x-y woman", SEXUAL),
    ("nu\u200bde", SEXUAL),
    ("nu\u200cd\u200de", SEXUAL),
    ("n\u00adude beach", SEXUAL),
    ("nu\u2060de\ufeff", SEXUAL),
    ("nüdé", SEXUAL),
    ("nu\u0308de", SEXUAL),
    ("nud\u0435 woman", SEXUAL),  # Cyrillic small ie
    ("\u0420\u041erN", SEXUAL),  # Cyrillic capitals er, o
    ("\u03a1orn", SEXUAL),  # Greek capital rho
    ("\uff4e\uff55\uff44\uff45", SEXUAL),
    ("\U0001d427\U0001d42e\U0001d41d\U0001d41e", SEXUAL),  # mathematical bold
    ("NuDe", SEXUAL),
    ("NUDES", SEXUAL),
    ("two pornos", SEXUAL),
    ("h3nt4i", SEXUAL),
    ("$ex", SEXUAL),
    ("5ex tape", SEXUAL),
    ("s\u0451x", SEXUAL),  # Cyrillic yo: ie with diaeresis
    ("blowjob", SEXUAL),
    ("blow-job", SEXUAL),
    ("b l o w j o b", SEXUAL),
    ("BLOW_JOB", SEXUAL),
    ("blow   job", SEXUAL),
    ("m4sturb4ting", SEXUAL),
    ("pussies", SEXUAL),
    ("g0re", GORE),
    ("a d3capitated body", GORE),
    ("d e c a p i t a t e d", GORE),
    ("blood-splatter", GORE),
    ("he1l h1tler", HATE),
    ("s.w.a.s.t.i.k.a", HATE),
    ("su1c1de", SELF_HARM),
    ("k1ll mys3lf", SELF_HARM),
    ("self-harm", SELF_HARM),
    ("selfharm", SELF_HARM),
    ("l0li", MINORS),
    ("lol\u0456", MINORS),  # Cyrillic i
    ("sexy t33n", MINORS),
    ("n.u.d.e ch1ld", MINORS),
    ("12yo in lingerie", MINORS),
    ("a twelve year old in a bikini", MINORS),
    ("a 14-year-old, n a k e d", MINORS),
]

# Innocent prompts that must pass even at strict: the Scunthorpe class and friends.
INNOCENT = [
    "class",
    "a classic car in Sussex",
    "a cocktail at sunset",
    "assassin's creed style",
    "a therapist's office",
    "Scunthorpe town centre",
    "a grape on a table",
    "Essex countryside",
    "shitake mushroom soup",  # profanity is not a category
    "a cockatoo on a branch",
    "analysis of a painting",
    "a Dickens novel illustration",
    "Hancock",
    "a bass guitar",
    "Penistone, a town in Yorkshire",
    "a hot dog",
    "a brass sextant",
    "kill la kill style anime",  # "kill" alone is not gore
    "child's drawing of a house",  # minors alone are fine
    "teenage mutant ninja turtles fan art",
    "a child playing in a park",
    "a cute baby elephant",
    "breast cancer awareness ribbon",
    "chicken breast with rice",
    "a blue tit on a branch",
    "two great tits in winter",
    "a maine coon cat",
    "a sperm whale",
    "Moby Dick illustration",
    "cumulus clouds",
    "a magna cum laude diploma",
    "spices in a jar",
    "a naked mole rat",
    "nude lipstick swatches",
    "a bloody mary",
    "Middlesex",
    "a cock-a-doodle-doo",
    "pussy willow branches",
    "a titmouse",
    "Hitchcock film poster",
    "4 cats on a sofa",
    "a 4k wallpaper",
    "Dick Van Dyke dancing",
    "suicide squad movie poster",
    "a raccoon",
    "a scrapbook",
    "buttercups in a meadow",
    "a lighthouse at dusk",
]


@pytest.mark.parametrize(("prompt", "category"), EVASIONS)
def test_evasions_are_caught(prompt_filter: PromptFilter, prompt: str, category: PromptCategory) -> None:
    verdict = prompt_filter.check(prompt, Context())
    assert verdict.decision is not A
    assert verdict.category == category.value
    assert verdict.stage == "prompt"


@pytest.mark.parametrize("prompt", INNOCENT)
def test_innocent_prompts_pass(prompt_filter: PromptFilter, prompt: str) -> None:
    verdict = prompt_filter.check(prompt, Context(strictness="strict"))
    assert verdict.decision is A, verdict.scores
    assert verdict.category is None
    assert verdict.reason == ALLOW_REASON


def test_tables_are_big_enough() -> None:
    assert len(EVASIONS) >= 30
    assert len(INNOCENT) >= 30


@pytest.mark.parametrize(("prompt", "category"), EVASIONS)
def test_reason_names_the_category_never_the_term(
    prompt_filter: PromptFilter, prompt: str, category: PromptCategory
) -> None:
    verdict = prompt_filter.check(prompt, Context())
    assert verdict.reason in ALL_REASONS
    if verdict.category != MINORS.value:
        assert category.plain in verdict.reason
    # No word of the prompt shows up in the reason, except the category's own plain words.
    words = set(normalize(verdict.reason).split()) - set(normalize(category.plain).split())
    assert not {w for w in normalize(prompt).split() if len(w) > 3} & words


def test_hard_block_reason_and_marker(prompt_filter: PromptFilter) -> None:
    verdict = prompt_filter.check("a sexy teen", Context())
    assert verdict.decision is B
    assert verdict.category == "minors"
    assert verdict.reason == HARD_BLOCK_REASON
    assert verdict.scores[HARD_BLOCK_SCORE] == 1.0
    assert verdict.scores["prompt.sexual"] == 1.0
    assert verdict.scores["prompt.minors"] == 1.0


HARD = ["a sexy teen", "nude child", "loli", "a 12 year old in lingerie", "schoolgirl in a bikini"]


@pytest.mark.parametrize("prompt", HARD)
@pytest.mark.parametrize(
    "rules",
    [
        PromptRules(exceptions=("teen", "child", "schoolgirl", "12 year old")),
        PromptRules(exceptions=("sexy", "nude", "lingerie", "bikini", "loli")),
        PromptRules(exceptions=("a sexy teen", "nude child", "loli", "a 12 year old in lingerie")),
    ],
)
@pytest.mark.parametrize("strictness", ["strict", "standard", "relaxed"])
def test_hard_block_cannot_be_lifted(
    prompt_filter: PromptFilter, prompt: str, rules: PromptRules, strictness: str
) -> None:
    verdict = prompt_filter.check(prompt, Context(strictness, allow_suggestive=True), rules)
    assert verdict.decision is B
    assert verdict.category == "minors"
    assert verdict.scores[HARD_BLOCK_SCORE] == 1.0


def test_minors_alone_are_allowed_and_reported(prompt_filter: PromptFilter) -> None:
    verdict = prompt_filter.check("kids building a sandcastle", Context(strictness="strict"))
    assert verdict.decision is A
    assert verdict.scores["prompt.minors"] == 1.0
    assert verdict.scores[HARD_BLOCK_SCORE] == 0.0


# (prompt, ordinary channel (strict, standard, relaxed), age-restricted channel (same order))
DECISION_TABLE = [
    ("a nude painting", (B, B, B), (B, B, F)),
    ("a woman in a bikini", (B, F, F), (A, A, A)),
    ("a gory battlefield", (B, B, F), (B, B, F)),
    ("heil hitler", (B, B, B), (B, B, B)),
    ("a suicide scene", (B, B, B), (B, B, B)),
    ("a child playing in a park", (A, A, A), (A, A, A)),
    ("a sexy teen", (B, B, B), (B, B, B)),
    ("a portrait of Taylor Swift", (A, A, A), (A, A, A)),
    ("a lighthouse", (A, A, A), (A, A, A)),
]


@pytest.mark.parametrize(("prompt", "ordinary", "restricted"), DECISION_TABLE)
def test_decision_table(
    prompt_filter: PromptFilter,
    prompt: str,
    ordinary: tuple[Decision, Decision, Decision],
    restricted: tuple[Decision, Decision, Decision],
) -> None:
    for allow_suggestive, row in ((False, ordinary), (True, restricted)):
        for strictness, expected in zip(("strict", "standard", "relaxed"), row, strict=True):
            verdict = prompt_filter.check(prompt, Context(strictness, allow_suggestive))
            assert verdict.decision is expected, (strictness, allow_suggestive)


def test_most_severe_category_decides(prompt_filter: PromptFilter) -> None:
    verdict = prompt_filter.check("a sexy zombie, gory, heil hitler", Context(strictness="relaxed"))
    assert verdict.decision is B
    assert verdict.category == "hate"
    assert verdict.scores["prompt.sexual"] == verdict.scores["prompt.gore"] == verdict.scores["prompt.hate"] == 1.0


def test_flag_reason(prompt_filter: PromptFilter) -> None:
    verdict = prompt_filter.check("a woman in lingerie", Context())
    assert verdict.decision is F
    assert verdict.reason == reason_for(F, SEXUAL)
    assert "moderator" in verdict.reason


def test_guild_additions_add_terms(prompt_filter: PromptFilter) -> None:
    rules = PromptRules(additions={GORE: ("zombie", "undead horde")})
    assert prompt_filter.check("a zombie", Context()).decision is A
    verdict = prompt_filter.check("two z0mbies and an undead-horde", Context(), rules)
    assert verdict.decision is B
    assert verdict.category == "gore"


def test_guild_additions_to_minors_feed_the_hard_block(prompt_filter: PromptFilter) -> None:
    rules = PromptRules(additions={MINORS: ("student",)})
    assert prompt_filter.check("a student in class", Context(), rules).decision is A
    verdict = prompt_filter.check("a sexy student", Context(strictness="relaxed", allow_suggestive=True), rules)
    assert verdict.decision is B
    assert verdict.scores[HARD_BLOCK_SCORE] == 1.0


def test_guild_additions_to_sexual_count_as_explicit(prompt_filter: PromptFilter) -> None:
    rules = PromptRules(additions={SEXUAL: ("spicy pic",)})
    verdict = prompt_filter.check("a spicy pic", Context(allow_suggestive=True), rules)
    assert verdict.decision is B
    assert verdict.scores["prompt.sexual_explicit"] == 1.0


@pytest.mark.parametrize(
    ("prompt", "exception"),
    [
        ("blood splatter art", "blood splatter"),
        ("a nude figure drawing class", "nude figure drawing"),
        ("heil hitler scene from a war film", "heil hitler"),
        ("a woman in a bikini", "bikini"),
    ],
)
def test_guild_exceptions_lift_other_categories(prompt_filter: PromptFilter, prompt: str, exception: str) -> None:
    assert prompt_filter.check(prompt, Context()).decision is not A
    verdict = prompt_filter.check(prompt, Context(), PromptRules(exceptions=(exception,)))
    assert verdict.decision is A
    assert verdict.scores["prompt.guild_exception"] == 1.0


def test_guild_exception_only_lifts_its_phrase(prompt_filter: PromptFilter) -> None:
    rules = PromptRules(exceptions=("blood splatter",))
    verdict = prompt_filter.check("blood splatter and a severed head", Context(), rules)
    assert verdict.decision is B
    assert verdict.category == "gore"


def test_model_version_records_the_data_and_the_rules(prompt_filter: PromptFilter) -> None:
    plain = prompt_filter.check("a cat", Context()).model_versions["prompt"]
    assert plain == prompt_filter.version
    assert "sha256:" in plain
    ruled = prompt_filter.check("a cat", Context(), PromptRules(exceptions=("x rays",))).model_versions["prompt"]
    assert ruled.startswith(plain + "+guild:")


def test_scores_cover_every_category(prompt_filter: PromptFilter) -> None:
    scores = prompt_filter.check("a cat", Context()).scores
    for category in PromptCategory:
        assert scores[f"prompt.{category.value}"] == 0.0
    assert scores[HARD_BLOCK_SCORE] == 0.0


def test_unknown_strictness_is_rejected(prompt_filter: PromptFilter) -> None:
    with pytest.raises(ValueError, match="'lenient'"):
        prompt_filter.check("a cat", Context(strictness="lenient"))


def test_category_plain_words() -> None:
    assert SEXUAL.plain == "sexual content"
    assert MINORS.plain == "content involving minors"
    assert GORE.plain == "graphic violence"
    assert HATE.plain == "hateful content"
    assert SELF_HARM.plain == "self-harm"
    assert PromptCategory.PROTECTED_PERSON.plain == "a protected person"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"additions": {PromptCategory.PROTECTED_PERSON: ("x",)}}, "protected_names"),
        ({"additions": {"violence": ("x",)}}, "'violence'"),
        ({"additions": {GORE: "zombie"}}, "'zombie'"),
        ({"exceptions": "blood"}, "'blood'"),
        ({"protected_names": ("Jane Doe", 3)}, "3"),
        ({"exceptions": ("!!!",)}, "'!!!'"),
        ({"additions": {GORE: ("two words*",)}}, "stem"),
    ],
)
def test_rules_reject_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PromptRules(**kwargs)  # type: ignore[arg-type]


def test_rules_are_frozen_and_hashable() -> None:
    one = PromptRules(additions={GORE: ("a", "b")}, exceptions=("x",))
    two = PromptRules(additions={"gore": ("a", "b")}, exceptions=("x",))  # type: ignore[dict-item]
    assert one == two
    assert hash(one) == hash(two)
    assert PromptRules.empty() == PromptRules()
    with pytest.raises(TypeError):
        one.additions[GORE] = ("c",)  # type: ignore[index]


# people


def test_people_named_public_figures(prompt_filter: PromptFilter) -> None:
    mention = prompt_filter.people_named("Joe Biden shaking hands with DONALD TRUMP's double, taylorswift")
    assert mention == PeopleMention(protected=(), public=("Joe Biden", "Donald Trump", "Taylor Swift"))


def test_people_named_aliases_use_the_display_name(prompt_filter: PromptFilter) -> None:
    assert prompt_filter.people_named("volodymyr zelensky").public == ("Volodymyr Zelenskyy",)
    assert prompt_filter.people_named("Kim Jong-un at a parade").public == ("Kim Jong Un",)


def test_people_named_protected_names(prompt_filter: PromptFilter) -> None:
    rules = PromptRules(protected_names=("Jane Doe", "Taylor Swift"))
    mention = prompt_filter.people_named("jane doe and Taylor Swift with Barack Obama", rules)
    assert mention.protected == ("Jane Doe", "Taylor Swift")
    assert mention.public == ("Barack Obama",)


@pytest.mark.parametrize(
    "prompt",
    [
        "a swift bird",
        "a trumpet",
        "Donald Duck",
        "Obamacare poster",
        "a bush in the garden",
        "Trump Tower",
        "a taylor made suit",
        "jane austen reading",
        "a smith will forge the sword",
    ],
)
def test_people_named_ignores_parts_and_substrings(prompt_filter: PromptFilter, prompt: str) -> None:
    rules = PromptRules(protected_names=("Jane Doe",))
    assert prompt_filter.people_named(prompt, rules) == PeopleMention()


def test_check_reports_people_but_allows(prompt_filter: PromptFilter) -> None:
    rules = PromptRules(protected_names=("Jane Doe",))
    verdict = prompt_filter.check("Jane Doe meets Elon Musk", Context(strictness="strict"), rules)
    assert verdict.decision is A
    assert verdict.scores["prompt.protected_person"] == 1.0
    assert verdict.scores["prompt.public_figure"] == 1.0


# data


def test_shipped_lists_are_real() -> None:
    data = resources.files("safety") / "data"
    terms = tomllib.loads((data / "prompt_terms.toml").read_text())
    for name in ("hate", "self_harm", "gore"):
        assert len(terms[name]["terms"]) >= 24, name
    assert len(terms["sexual"]["explicit"]) >= 24
    assert len(terms["sexual"]["suggestive"]) >= 24
    assert len(terms["minors"]["terms"]) >= 24
    names = [line for line in (data / "public_figures.txt").read_text().splitlines() if line and line[0] != "#"]
    assert len(names) >= 100


def test_every_shipped_term_is_matched(prompt_filter: PromptFilter) -> None:
    terms = tomllib.loads((resources.files("safety") / "data" / "prompt_terms.toml").read_text())
    for table, lists in terms.items():
        if table in ("version", "exceptions"):
            continue
        for kind, entries in lists.items():
            for entry in entries:
                prompt = entry[:-1] + "ing" if entry.endswith("*") else entry
                if (table, kind) == ("minors", "terms"):
                    prompt = f"sexy {prompt}"  # minors alone are allowed; paired, a hard block
                verdict = prompt_filter.check(prompt, Context(strictness="strict"))
                assert verdict.decision is B, (table, kind, entry)


def test_every_shipped_exception_is_allowed(prompt_filter: PromptFilter) -> None:
    terms = tomllib.loads((resources.files("safety") / "data" / "prompt_terms.toml").read_text())
    for phrase in terms["exceptions"]["phrases"]:
        assert prompt_filter.check(phrase, Context(strictness="strict")).decision is A, phrase


def test_from_files(tmp_path: Path) -> None:
    terms = tmp_path / "terms.toml"
    terms.write_text('version = "t1"\n[gore]\nterms = ["splat*"]\n[exceptions]\nphrases = ["splat ball"]\n')
    figures = tmp_path / "figures.txt"
    figures.write_text("# people\nAda Lovelace | Augusta Ada King  # a comment\n\n")
    loaded = PromptFilter.from_files(terms, figures)
    assert loaded.version.startswith("t1+sha256:")
    assert loaded.check("splattered", Context()).category == "gore"
    assert loaded.check("a splat ball", Context()).decision is A
    assert loaded.people_named("augusta ada king").public == ("Ada Lovelace",)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("version = ", "not valid TOML"),
        ("[gore]\nterms = []", "version"),
        ('version = "1"\n[violence]\nterms = ["x"]', "violence.terms"),
        ('version = "1"\n[gore]\nterms = "x"', "'x'"),
        ('version = "1"\ngore = 3', "3"),
        ('version = "1"\n[gore]\nterms = ["!!!"]', "'!!!'"),
        ('version = "1"\n[gore]\nterms = ["two words*"]', "stem"),
    ],
)
def test_bad_term_files_are_rejected(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PromptFilter.from_data(text.encode(), b"")


# properties


@settings(max_examples=300)
@given(
    prompt=st.text(alphabet=st.characters(exclude_categories=()), max_size=300),
    strictness=st.sampled_from(["strict", "standard", "relaxed"]),
    allow_suggestive=st.booleans(),
)
def test_check_never_raises(prompt_filter: PromptFilter, prompt: str, strictness: str, allow_suggestive: bool) -> None:
    verdict = prompt_filter.check(prompt, Context(strictness, allow_suggestive))
    assert verdict.decision in Decision
    assert verdict.reason in ALL_REASONS
    assert all(0.0 <= v <= 1.0 for v in verdict.scores.values())


WORDY = st.lists(
    st.sampled_from(["a", "nude", "child", "blue", "tit", "sexy", "gore", "s", "e", "x", "y", "0", "-", ".", "kid"]),
    max_size=12,
).map(" ".join)


@settings(max_examples=300)
@given(prompt=WORDY)
def test_check_is_stable_under_normalisation(prompt_filter: PromptFilter, prompt: str) -> None:
    context = Context()
    assert prompt_filter.check(prompt, context) == prompt_filter.check(normalize(prompt), context)
