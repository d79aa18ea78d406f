"""The prompt filter: judges a prompt against term lists before anything is generated.

Prompts and terms are compared after :func:`safety.normalize.normalize`, as whole words, through
a word-sequence lexicon (one dictionary lookup per word and phrase length, so a 200-character
prompt costs tens of microseconds). The shipped lists live in ``safety/data/``; a server adds
terms and exceptions with :class:`PromptRules`.

Decision table (strictness strict / standard / relaxed; "channel" is an age-restricted channel,
``allow_suggestive``):

=====================  ==========================  ==========================
matched                ordinary channel            age-restricted channel
=====================  ==========================  ==========================
sexual + minors        BLOCK (hard, always)        BLOCK (hard, always)
hate                   BLOCK / BLOCK / BLOCK       BLOCK / BLOCK / BLOCK
self-harm              BLOCK / BLOCK / BLOCK       BLOCK / BLOCK / BLOCK
sexual, explicit       BLOCK / BLOCK / BLOCK       BLOCK / BLOCK / FLAG
sexual, suggestive     BLOCK / FLAG / FLAG         ALLOW / ALLOW / ALLOW
gore                   BLOCK / BLOCK / FLAG        BLOCK / BLOCK / FLAG
minors alone           ALLOW (reported)            ALLOW (reported)
protected person       ALLOW (reported)            ALLOW (reported)
=====================  ==========================  ==========================

The hard block: a prompt that pairs a minor with any sexual term (explicit *or* suggestive), or
uses a word that already means sexualised minors ("loli"), is blocked with category ``"minors"``
and ``scores["prompt.hard_block"] == 1.0``; the caller tells a hard block by that score. It is
decided before a server's exceptions are applied, so no setting, exception or appeal lifts it.
Minors alone ("a child playing in a park") are allowed: children in innocent contexts are fine,
and the image stage still judges the pictures. Named people are allowed here and reported in the
scores; the image stage decides with the faces it sees.

A server's exceptions lift every other category; a server's additions only ever add terms (an
addition to ``SEXUAL`` counts as explicit). The user is told the category in plain words, never
the term that matched.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar

from safety.normalize import normalize
from safety.verdict import Decision, Verdict

logger = logging.getLogger(__name__)

STAGE = "prompt"
HARD_BLOCK_SCORE = "prompt.hard_block"
ALLOW_REASON = "Your prompt passed the prompt filter."
HARD_BLOCK_REASON = "Your prompt asks for sexual content involving minors, which is never allowed."


class PromptCategory(StrEnum):
    """What a prompt asks for, as far as the filter is concerned."""

    SEXUAL = "sexual"  # explicit or suggestive sexual content
    MINORS = "minors"  # a child or teenager is mentioned (a hard block together with SEXUAL)
    GORE = "gore"  # graphic violence: wounds, mutilation, dead bodies shown in detail
    HATE = "hate"  # slurs, hate symbols, calls to violence against a group
    SELF_HARM = "self_harm"  # self-harm and suicide
    PROTECTED_PERSON = "protected_person"  # a person in the protected-people gallery is named

    @property
    def plain(self) -> str:
        """The category in words a user understands."""
        return _PLAIN[self]


_PLAIN = MappingProxyType(
    {
        PromptCategory.SEXUAL: "sexual content",
        PromptCategory.MINORS: "content involving minors",
        PromptCategory.GORE: "graphic violence",
        PromptCategory.HATE: "hateful content",
        PromptCategory.SELF_HARM: "self-harm",
        PromptCategory.PROTECTED_PERSON: "a protected person",
    }
)


class _Group(StrEnum):
    """The term lists, one finer than the categories."""

    EXPLICIT = "sexual.explicit"
    SUGGESTIVE = "sexual.suggestive"
    MINORS = "minors.terms"
    SEXUALISED = "minors.sexualised"  # already means sexual content involving minors: hard alone
    GORE = "gore.terms"
    HATE = "hate.terms"
    SELF_HARM = "self_harm.terms"

    @property
    def category(self) -> PromptCategory:
        return PromptCategory(self.value.split(".")[0])


_SEXUAL = frozenset({_Group.EXPLICIT, _Group.SUGGESTIVE})
_ADDED_TO = MappingProxyType(
    {
        PromptCategory.SEXUAL: _Group.EXPLICIT,
        PromptCategory.MINORS: _Group.MINORS,
        PromptCategory.GORE: _Group.GORE,
        PromptCategory.HATE: _Group.HATE,
        PromptCategory.SELF_HARM: _Group.SELF_HARM,
    }
)

_A, _F, _B = Decision.ALLOW, Decision.FLAG, Decision.BLOCK
# group -> (ordinary channel, age-restricted channel), each (strict, standard, relaxed).
# Order is priority among equally severe decisions. The hard block is decided before this table.
_DECISIONS: Mapping[_Group, tuple[tuple[Decision, Decision, Decision], tuple[Decision, Decision, Decision]]] = (
    MappingProxyType(
        {
            _Group.HATE: ((_B, _B, _B), (_B, _B, _B)),
            _Group.SELF_HARM: ((_B, _B, _B), (_B, _B, _B)),
            _Group.EXPLICIT: ((_B, _B, _B), (_B, _B, _F)),
            _Group.SUGGESTIVE: ((_B, _F, _F), (_A, _A, _A)),
            _Group.GORE: ((_B, _B, _F), (_B, _B, _F)),
            _Group.MINORS: ((_A, _A, _A), (_A, _A, _A)),
        }
    )
)
_STRICTNESS = MappingProxyType({"strict": 0, "standard": 1, "relaxed": 2})

# Ages under 18 written as a number or a word, followed by "year old", "yo" and the like.
_AGE_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
)
_AGES = frozenset(_AGE_WORDS.split()) | frozenset(str(n) for n in range(18))
_AGE_SUFFIXES = (("year", "old"), ("years", "old"), ("yr", "old"), ("yrs", "old"), ("yo",), ("yearold",))
_AGE_TOKEN = re.compile(r"(\d{1,2})(?:yo|y)")


def _minor_age(words: Sequence[str]) -> bool:
    """Whether the words state an age under 18 ("12 year old", "twelve yo", "12yo")."""
    for i, word in enumerate(words):
        token = _AGE_TOKEN.fullmatch(word)
        if token and int(token.group(1)) < 18:
            return True
        if word in _AGES and any(tuple(words[i + 1 : i + 1 + len(s)]) == s for s in _AGE_SUFFIXES):
            return True
    return False


class FilterContext(Protocol):
    """What the filter needs to know about the request (``safety.policy.CheckContext`` has it)."""

    @property
    def strictness(self) -> str: ...

    @property
    def allow_suggestive(self) -> bool: ...


@dataclass(frozen=True)
class PromptRules:
    """A server's own terms, exceptions and protected names.

    Attributes:
        additions: extra terms per category (not ``PROTECTED_PERSON``); ``SEXUAL`` terms count as
            explicit.
        exceptions: phrases that are innocent in this server; they lift every category except the
            hard block.
        protected_names: full names of people in the protected-people gallery (global + server).
    """

    additions: Mapping[PromptCategory, tuple[str, ...]] = field(default_factory=dict)
    exceptions: tuple[str, ...] = ()
    protected_names: tuple[str, ...] = ()
    # Built (and so validated) once per distinct rules; shared through the caches below.
    _added: _Lexicon[_Group] = field(init=False, repr=False, compare=False)
    _excepted: _Lexicon[str] = field(init=False, repr=False, compare=False)
    _protected: _Lexicon[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        additions: dict[PromptCategory, tuple[str, ...]] = {}
        for key, terms in self.additions.items():
            try:
                category = PromptCategory(key)
            except ValueError:
                raise ValueError(f"unknown prompt category {key!r} in additions") from None
            if category is PromptCategory.PROTECTED_PERSON:
                raise ValueError("protected people are listed in protected_names, not in additions")
            additions[category] = _strings(terms, f"additions[{key!r}]")
        object.__setattr__(self, "additions", MappingProxyType(additions))
        object.__setattr__(self, "exceptions", _strings(self.exceptions, "exceptions"))
        object.__setattr__(self, "protected_names", _strings(self.protected_names, "protected_names"))
        object.__setattr__(self, "_added", _additions_lexicon(tuple(sorted(additions.items()))))
        object.__setattr__(self, "_excepted", _phrase_lexicon(self.exceptions))
        object.__setattr__(self, "_protected", _names_lexicon(self.protected_names))

    @classmethod
    def empty(cls) -> PromptRules:
        """No additions, no exceptions, no protected names."""
        return cls()

    @property
    def key(self) -> tuple[object, ...]:
        """A hashable, order-independent form of the rules."""
        additions = tuple(sorted((str(c), tuple(sorted(t))) for c, t in self.additions.items()))
        return (additions, tuple(sorted(self.exceptions)), tuple(sorted(self.protected_names)))

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def digest(self) -> str:
        """A short hash of the rules, recorded with the verdict."""
        return hashlib.sha256(repr(self.key).encode()).hexdigest()[:12]


def _strings(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ValueError(f"{what} must be a sequence of strings, not the string {values!r}")
    items = tuple(values)
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what} must hold strings; got {item!r}")
    return items


@dataclass(frozen=True)
class PeopleMention:
    """The people a prompt names, by display name, in order of first mention."""

    protected: tuple[str, ...] = ()
    public: tuple[str, ...] = ()


L = TypeVar("L")


class _Lexicon(Generic[L]):
    """Whole-word phrases (with inflections and run-together forms) and stems, each with a label."""

    def __init__(self, entries: Iterable[tuple[str, L]]) -> None:
        phrases: dict[str, set[L]] = {}
        stems: dict[str, set[L]] = {}
        for raw, label in entries:
            if raw.rstrip().endswith("*"):
                stem = normalize(raw.rstrip()[:-1])
                if not stem or " " in stem:
                    raise ValueError(f"a stem must be one word followed by '*'; got {raw!r}")
                stems.setdefault(stem, set()).add(label)
                continue
            words = normalize(raw).split()
            if not words:
                raise ValueError(f"term {raw!r} is empty after normalisation")
            for form in _forms(words):
                phrases.setdefault(form, set()).add(label)
        self._phrases = {k: frozenset(v) for k, v in phrases.items()}
        self._stems = {k: frozenset(v) for k, v in stems.items()}
        self._stem_prefixes = tuple(self._stems)
        self._starts = frozenset(k.split(" ")[0] for k in phrases if " " in k)
        self._longest = max((k.count(" ") + 1 for k in phrases), default=1)

    def spans(self, words: Sequence[str]) -> Iterator[tuple[int, int, frozenset[L]]]:
        """Every occurrence as ``(first word, end word, labels)``."""
        for i, word in enumerate(words):
            labels = self._phrases.get(word)
            if labels:
                yield i, i + 1, labels
            if word.startswith(self._stem_prefixes):
                for stem, labels in self._stems.items():
                    if word.startswith(stem):
                        yield i, i + 1, labels
            if word in self._starts:
                for end in range(i + 2, min(i + self._longest, len(words)) + 1):
                    labels = self._phrases.get(" ".join(words[i:end]))
                    if labels:
                        yield i, end, labels


def _forms(words: list[str]) -> Iterator[str]:
    """A term as written, with its last word inflected, and run together if it is a phrase."""
    last = words[-1]
    endings = [last, last + "s", last + "z"]
    if last.endswith(("s", "x", "z", "ch", "sh")):  # only these take "es": "spic" must not match "spices"
        endings.append(last + "es")
    if last.endswith("y"):
        endings.append(last[:-1] + "ies")
    for ending in endings:
        phrase = [*words[:-1], ending]
        yield " ".join(phrase)
        if len(phrase) > 1:
            yield "".join(phrase)


def _masked(words: Sequence[str], *lexicons: _Lexicon[str]) -> frozenset[int]:
    return frozenset(i for lexicon in lexicons for start, end, _ in lexicon.spans(words) for i in range(start, end))


@lru_cache(maxsize=256)
def _phrase_lexicon(phrases: tuple[str, ...]) -> _Lexicon[str]:
    return _Lexicon((p, "exception") for p in phrases)


@lru_cache(maxsize=256)
def _names_lexicon(names: tuple[str, ...]) -> _Lexicon[str]:
    return _Lexicon((n, n) for n in names)


@lru_cache(maxsize=256)
def _additions_lexicon(additions: tuple[tuple[PromptCategory, tuple[str, ...]], ...]) -> _Lexicon[_Group]:
    return _Lexicon((term, _ADDED_TO[category]) for category, terms in additions for term in terms)


class PromptFilter:
    """Judges prompts against term lists; build one with :meth:`default` or :meth:`from_files`.

    Args:
        terms: the term lists keyed ``"sexual.explicit"``, ``"sexual.suggestive"``,
            ``"minors.terms"``, ``"minors.sexualised"``, ``"gore.terms"``, ``"hate.terms"``,
            ``"self_harm.terms"`` (each may be missing).
        exceptions: innocent phrases removed from every prompt before matching.
        public_figures: one entry per person: the display name, then any other spellings.
        version: the version of the term data, recorded in every verdict.
    """

    def __init__(
        self,
        terms: Mapping[str, Sequence[str]],
        exceptions: Sequence[str],
        public_figures: Sequence[Sequence[str]],
        *,
        version: str,
    ) -> None:
        entries: list[tuple[str, _Group]] = []
        for key, values in terms.items():
            try:
                group = _Group(key)
            except ValueError:
                raise ValueError(f"unknown term list {key!r}; expected one of {[g.value for g in _Group]}") from None
            entries.extend((term, group) for term in _strings(values, key))
        self._terms = _Lexicon(entries)
        self._exceptions = _phrase_lexicon(_strings(exceptions, "exceptions"))
        self._public = _Lexicon((alias, names[0]) for names in public_figures for alias in names)
        self.version = version

    @classmethod
    def default(cls) -> PromptFilter:
        """The filter with the term lists and public figures shipped in ``safety/data``."""
        data = resources.files("safety") / "data"
        terms = (data / "prompt_terms.toml").read_bytes()
        figures = (data / "public_figures.txt").read_bytes()
        return cls.from_data(terms, figures)

    @classmethod
    def from_files(cls, terms: Path, public_figures: Path) -> PromptFilter:
        """A filter from a term file (TOML, laid out like the shipped one) and a names file."""
        return cls.from_data(terms.read_bytes(), public_figures.read_bytes())

    @classmethod
    def from_data(cls, terms: bytes, public_figures: bytes) -> PromptFilter:
        """A filter from the contents of a term file and a names file."""
        version, lists, exceptions = _parse_terms(terms)
        figures = [
            [name.strip() for name in line.split("#")[0].split("|")]
            for line in public_figures.decode("utf-8", errors="replace").splitlines()
            if line.split("#")[0].strip()
        ]
        digest = hashlib.sha256(terms + b"\0" + public_figures).hexdigest()[:12]
        logger.debug("prompt terms %s (sha256 %s), %d public figures", version, digest, len(figures))
        return cls(lists, exceptions, figures, version=f"{version}+sha256:{digest}")

    def check(self, prompt: str, context: FilterContext, rules: PromptRules | None = None) -> Verdict:
        """Judge a prompt.

        Args:
            prompt: the prompt as the user wrote it.
            context: the server's strictness and whether the channel is age-restricted.
            rules: the server's additions, exceptions and protected names.

        Returns:
            A verdict with stage ``"prompt"``; see the module docstring for the decision table.

        Raises:
            ValueError: the context's strictness is not ``relaxed``, ``standard`` or ``strict``.
        """
        rules = PromptRules.empty() if rules is None else rules
        column = _STRICTNESS.get(context.strictness)
        if column is None:
            raise ValueError(f"unknown strictness {context.strictness!r}; expected relaxed, standard or strict")
        words = normalize(prompt).split()
        raw = self._groups(words, rules, with_guild_exceptions=False)
        hard = _Group.SEXUALISED in raw or (_Group.MINORS in raw and bool(raw & _SEXUAL))
        groups = raw if hard or not rules.exceptions else self._groups(words, rules, with_guild_exceptions=True)
        people = self._people(words, rules)
        scores = {f"{STAGE}.{c.value}": float(any(g.category is c for g in groups)) for c in PromptCategory}
        scores |= {
            f"{STAGE}.protected_person": float(bool(people.protected)),
            f"{STAGE}.public_figure": float(bool(people.public)),
            f"{STAGE}.sexual_explicit": float(_Group.EXPLICIT in groups),
            f"{STAGE}.guild_exception": float(groups != raw),
            HARD_BLOCK_SCORE: float(hard),
        }
        versions = {STAGE: self.version if rules == PromptRules.empty() else f"{self.version}+guild:{rules.digest}"}
        if hard:
            return Verdict(_B, STAGE, HARD_BLOCK_REASON, PromptCategory.MINORS.value, scores, versions)
        decision, group = _decide(groups, column, context.allow_suggestive)
        if decision is _A or group is None:
            return Verdict(_A, STAGE, ALLOW_REASON, None, scores, versions)
        return Verdict(decision, STAGE, reason_for(decision, group.category), group.category.value, scores, versions)

    def people_named(self, prompt: str, rules: PromptRules | None = None) -> PeopleMention:
        """The protected people and public figures a prompt names (full names, whole words).

        A surname or first name alone is not a mention: too many are ordinary words.
        """
        rules = PromptRules.empty() if rules is None else rules
        return self._people(normalize(prompt).split(), rules)

    def _people(self, words: Sequence[str], rules: PromptRules) -> PeopleMention:
        protected = _in_order(rules._protected.spans(words))
        public = tuple(n for n in _in_order(self._public.spans(words)) if n not in protected)
        return PeopleMention(protected, public)

    def _groups(self, words: Sequence[str], rules: PromptRules, *, with_guild_exceptions: bool) -> frozenset[_Group]:
        lexicons = [self._exceptions, rules._excepted] if with_guild_exceptions else [self._exceptions]
        masked = _masked(words, *lexicons)
        found = {
            label
            for lexicon in (self._terms, rules._added)
            for start, end, labels in lexicon.spans(words)
            if masked.isdisjoint(range(start, end))
            for label in labels
        }
        if _minor_age(words):
            found.add(_Group.MINORS)
        return frozenset(found)


def _parse_terms(data: bytes) -> tuple[str, dict[str, Sequence[str]], Sequence[str]]:
    """The version, the term lists keyed ``"<table>.<list>"`` and the exceptions of a term file."""
    try:
        table = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"the prompt term file is not valid TOML: {exc}") from exc
    version = table.pop("version", None)
    if not isinstance(version, str):
        raise ValueError(f"the prompt term file needs a string 'version'; got {version!r}")
    lists: dict[str, Sequence[str]] = {}
    for name, kinds in table.items():
        if not isinstance(kinds, dict):
            raise ValueError(f"[{name}] in the prompt term file must be a table; got {kinds!r}")
        lists.update((f"{name}.{kind}", values) for kind, values in kinds.items())
    exceptions = lists.pop("exceptions.phrases", [])
    return version, lists, exceptions


def _in_order(spans: Iterable[tuple[int, int, frozenset[str]]]) -> tuple[str, ...]:
    names = [name for _, _, labels in sorted(spans, key=lambda s: s[0]) for name in sorted(labels)]
    return tuple(dict.fromkeys(names))


def _decide(groups: frozenset[_Group], column: int, allow_suggestive: bool) -> tuple[Decision, _Group | None]:
    """The most severe decision among the matched groups, and the group behind it."""
    best: tuple[Decision, _Group | None] = (_A, None)
    for group, rows in _DECISIONS.items():
        if group in groups:
            decision = rows[int(allow_suggestive)][column]
            if decision.severity > best[0].severity:
                best = (decision, group)
    return best


def reason_for(decision: Decision, category: PromptCategory) -> str:
    """The sentence a user reads for a decision about a category (never names a term)."""
    if decision is Decision.ALLOW:
        return ALLOW_REASON
    if decision is Decision.FLAG:
        return f"Your prompt may ask for {category.plain}, so a moderator will review the images first."
    return f"Your prompt asks for {category.plain}, which this server does not allow."
