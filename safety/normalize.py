"""Normalising prompt text so that disguised words match the plain words of a term list.

:func:`normalize` turns arbitrary text into lowercase, space-separated words, undoing the usual
ways of hiding a word from a filter. It works in two stages:

Characters (one code point at a time, so the stage commutes with concatenation):
    compatibility decomposition (NFKD: fullwidth, mathematical-bold and circled letters become
    plain ones, ligatures are split, circled digits become digits); removal of combining marks
    (``nüdé`` → ``nude``), of invisible format characters (zero-width space and joiners, word
    joiner, BOM, soft hyphen, bidi controls) and of apostrophes (``child's`` → ``childs``);
    Cyrillic and Greek look-alikes mapped to the Latin letter they imitate (case-sensitively,
    before case folding: Greek capital eta looks like ``h`` but small eta like ``n``); any
    script's decimal digits to ASCII digits; every other space or control character to a space;
    then case folding. The output stays decomposed (NFKD, without marks): that form, unlike NFC,
    is closed under concatenation, which is what makes the whole function idempotent.

Words (a word is a run of letters, digits and the leet symbols ``@ $ ! € ¡``; everything else
separates words):
    1. Runs of single characters joined by exactly one separator are collapsed into one word:
       ``n.u.d.e``, ``n-u-d-e``, ``n_u_d_e`` and ``n u d e`` all become ``nude``. With a space as
       separator a run needs three characters (``x y`` stays, ``a red car`` stays); with any
       other separator two are enough (``e.g.`` → ``eg``). A run of digits alone is never
       collapsed (``1.5`` → ``1 5``, not ``15``). Collapsing is repeated until no run is left,
       so the output never holds three single-character words in a row unless all are digits.
    2. Leetspeak is undone only in words that mix letters with digits or leet symbols:
       ``p0rn`` → ``porn``, ``$ex`` → ``sex``, ``a$$`` → ``ass``, ``k!ll`` → ``kill``
       (``0→o 1→i 3→e 4→a 5→s 7→t 8→b 9→g @→a $→s !→i €→e ¡→i``; ``1`` is read as ``i``, never
       ``l``). Numbers stay numbers: ``4 cats`` stays ``4 cats``, and a number with a unit or an
       ordinal suffix (``4k``, ``1080p``, ``3d``, ``35mm``, ``1920s``, ``2nd``, ``12yo``) is left as
       written. ``!`` at either end of a word is punctuation and dropped (``wow!`` → ``wow``);
       a word without letters loses its symbols (``$100`` → ``100``, a lone ``$`` disappears).

The result is the words joined by single spaces. :func:`normalize` never raises on a ``str`` and
``normalize(normalize(x)) == normalize(x)`` for every ``x``.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize"]

# Look-alikes from other scripts, by the Latin letter they imitate. Keyed by the character as
# written (before case folding): Greek capital ETA looks like "h" but small eta like "n". Only
# letters whose usual glyph passes for a Latin letter are listed; the rest of Cyrillic and Greek
# is left alone.
_LOOKALIKES: dict[str, tuple[str, ...]] = {
    "a": ("CYRILLIC CAPITAL LETTER A", "CYRILLIC SMALL LETTER A", "GREEK CAPITAL LETTER ALPHA",
          "GREEK SMALL LETTER ALPHA"),
    "b": ("CYRILLIC CAPITAL LETTER VE", "CYRILLIC SMALL LETTER VE", "CYRILLIC CAPITAL LETTER SOFT SIGN",
          "CYRILLIC SMALL LETTER SOFT SIGN", "GREEK CAPITAL LETTER BETA", "LATIN SMALL LETTER B WITH STROKE"),
    "c": ("CYRILLIC CAPITAL LETTER ES", "CYRILLIC SMALL LETTER ES"),
    "d": ("CYRILLIC CAPITAL LETTER KOMI DE", "CYRILLIC SMALL LETTER KOMI DE", "LATIN SMALL LETTER D WITH STROKE"),
    "e": ("CYRILLIC CAPITAL LETTER IE", "CYRILLIC SMALL LETTER IE", "GREEK CAPITAL LETTER EPSILON",
          "GREEK SMALL LETTER EPSILON"),
    "h": ("CYRILLIC CAPITAL LETTER EN", "CYRILLIC SMALL LETTER EN", "CYRILLIC CAPITAL LETTER SHHA",
          "CYRILLIC SMALL LETTER SHHA", "GREEK CAPITAL LETTER ETA", "LATIN SMALL LETTER H WITH STROKE"),
    "i": ("CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I", "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I",
          "GREEK CAPITAL LETTER IOTA", "GREEK SMALL LETTER IOTA", "LATIN SMALL LETTER DOTLESS I",
          "LATIN SMALL LETTER I WITH STROKE"),
    "j": ("CYRILLIC CAPITAL LETTER JE", "CYRILLIC SMALL LETTER JE", "LATIN SMALL LETTER DOTLESS J"),
    "k": ("CYRILLIC CAPITAL LETTER KA", "CYRILLIC SMALL LETTER KA", "GREEK CAPITAL LETTER KAPPA",
          "GREEK SMALL LETTER KAPPA"),
    "l": ("CYRILLIC LETTER PALOCHKA", "CYRILLIC SMALL LETTER PALOCHKA", "LATIN SMALL LETTER L WITH STROKE"),
    "m": ("CYRILLIC CAPITAL LETTER EM", "CYRILLIC SMALL LETTER EM", "GREEK CAPITAL LETTER MU"),
    "n": ("GREEK CAPITAL LETTER NU", "GREEK SMALL LETTER ETA"),
    "o": ("CYRILLIC CAPITAL LETTER O", "CYRILLIC SMALL LETTER O", "GREEK CAPITAL LETTER OMICRON",
          "GREEK SMALL LETTER OMICRON", "LATIN SMALL LETTER O WITH STROKE"),
    "p": ("CYRILLIC CAPITAL LETTER ER", "CYRILLIC SMALL LETTER ER", "GREEK CAPITAL LETTER RHO",
          "GREEK SMALL LETTER RHO"),
    "q": ("CYRILLIC CAPITAL LETTER QA", "CYRILLIC SMALL LETTER QA"),
    "s": ("CYRILLIC CAPITAL LETTER DZE", "CYRILLIC SMALL LETTER DZE", "GREEK SMALL LETTER FINAL SIGMA"),
    "t": ("CYRILLIC CAPITAL LETTER TE", "CYRILLIC SMALL LETTER TE", "GREEK CAPITAL LETTER TAU",
          "GREEK SMALL LETTER TAU", "LATIN SMALL LETTER T WITH STROKE"),
    "u": ("GREEK SMALL LETTER UPSILON",),
    "v": ("GREEK SMALL LETTER NU",),
    "w": ("CYRILLIC CAPITAL LETTER WE", "CYRILLIC SMALL LETTER WE"),
    "x": ("CYRILLIC CAPITAL LETTER HA", "CYRILLIC SMALL LETTER HA", "GREEK CAPITAL LETTER CHI",
          "GREEK SMALL LETTER CHI"),
    "y": ("CYRILLIC CAPITAL LETTER U", "CYRILLIC SMALL LETTER U", "CYRILLIC CAPITAL LETTER STRAIGHT U",
          "CYRILLIC SMALL LETTER STRAIGHT U", "GREEK CAPITAL LETTER UPSILON"),
    "z": ("GREEK CAPITAL LETTER ZETA",),
    # Latin letters that compatibility decomposition leaves whole
    "ae": ("LATIN SMALL LETTER AE",),
    "oe": ("LATIN SMALL LIGATURE OE",),
    "ss": ("LATIN SMALL LETTER SHARP S",),
}  # fmt: skip
_CONFUSABLES = {unicodedata.lookup(name): latin for latin, names in _LOOKALIKES.items() for name in names}

# Deleted, so that a word split by an apostrophe stays one word: ASCII apostrophe, left and right
# single quotation marks, modifier letter apostrophe and turned comma, grave accent.
_APOSTROPHES = frozenset("'\u2019\u2018\u02bc\u02bb`")

_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g"}
    | {"@": "a", "$": "s", "!": "i", "€": "e", "¡": "i"}
)
_LEET_SYMBOLS = "@$!€¡"
_LEET_DIGITS = frozenset("01345789")

# A word is a run of letters, digits and leet symbols (``[^\W_]`` is "alphanumeric"); splitting
# on the capturing pattern gives gap, word, gap, word, ..., gap.
_WORD = re.compile(r"((?:[^\W_]|[@$!€¡])+)")
# A number followed by a unit or an ordinal suffix is a quantity, not leetspeak.
_QUANTITY = re.compile(
    r"\d+(?:k|p|d|x|s|h|m|mm|cm|km|px|st|nd|rd|th|fps|hz|gb|mb|kb|tb|bit|am|pm|yo|yr|yrs|y)", re.ASCII
)

# Keep the per-character cache bounded: adversarial input could otherwise fill it with every
# code point there is.
_CACHE_LIMIT = 1 << 16


def _map_char(char: str) -> str:
    """Where one decomposed character goes in the character stage."""
    mapped = _CONFUSABLES.get(char)
    if mapped is not None:
        return mapped
    if char in _APOSTROPHES:
        return ""
    category = unicodedata.category(char)
    if category[0] == "M" or category == "Cf":  # combining marks; zero-width and other format chars
        return ""
    if category == "Nd":
        return str(unicodedata.decimal(char, 0))
    if category[0] in "CZ" or char.isspace():  # controls, separators, surrogates, unassigned
        return " "
    return char


class _CharTable(dict[int, str]):
    """A ``str.translate`` table filled on demand from :func:`_map_char`."""

    def __missing__(self, key: int) -> str:
        value = _map_char(chr(key))
        if len(self) < _CACHE_LIMIT:
            self[key] = value
        return value


_CHARS = _CharTable()


def _clean_chars(text: str) -> str:
    """The character stage: decompose, map look-alikes, drop marks, fold case (to a fixed point)."""
    text = unicodedata.normalize("NFKD", text).translate(_CHARS)
    for _ in range(4):  # case folding can expose characters that need mapping again; rarely twice
        folded = unicodedata.normalize("NFKD", text.casefold()).translate(_CHARS)
        if folded == text:
            break
        text = folded
    return text


def _clean_word(word: str) -> str:
    """Undo leetspeak in a word that mixes letters with digits or symbols; tidy the rest."""
    if word.isalpha():  # the common case, and nothing to do
        return word
    word = word.strip("!")
    if not any(c.isalpha() for c in word):
        return "".join(c for c in word if c not in _LEET_SYMBOLS)
    if _QUANTITY.fullmatch(word):
        return word
    if any(c in _LEET_DIGITS or c in _LEET_SYMBOLS for c in word):
        return word.translate(_LEET)
    return word


def _collapsible(run: list[str], gaps: list[str]) -> bool:
    """Whether a run of single characters is a spelled-out word."""
    if not any(c.isalpha() for c in run):
        return False
    return len(run) >= 3 or (len(run) == 2 and not gaps[0].isspace())


def _collapse(words: list[str], gaps: list[str]) -> list[str]:
    """Join runs of single characters separated by exactly one separator character.

    A run keeps one separator throughout: in ``a n.u.d.e`` the article stays apart from the dotted
    word. In a space-separated run, a leading one-letter English word (``a``, ``i``) stays apart too.

    Args:
        words: the words in order.
        gaps: ``gaps[i]`` is the text between ``words[i]`` and ``words[i + 1]``.
    """
    out: list[str] = []
    run: list[str] = []
    run_gaps: list[str] = []
    for i, word in enumerate(words):
        gap = gaps[i - 1] if i else ""
        if len(word) == 1 and run and len(gap) == 1 and (not run_gaps or gap == run_gaps[0]):
            run_gaps.append(gap)
            run.append(word)
            continue
        if len(word) == 1 and run and len(gap) == 1:  # the separator changed: start a new run
            if _collapsible(run, run_gaps):
                out.extend(_joined(run, run_gaps))
                run, run_gaps = [word], []
            else:
                out.extend(run[:-1])
                run, run_gaps = [run[-1], word], [gap]
            continue
        out.extend(_joined(run, run_gaps) if _collapsible(run, run_gaps) else run)
        run, run_gaps = ([word], []) if len(word) == 1 else ([], [])
        if len(word) != 1:
            out.append(word)
    out.extend(_joined(run, run_gaps) if _collapsible(run, run_gaps) else run)
    return out


def _joined(run: list[str], gaps: list[str]) -> list[str]:
    if gaps[0].isspace() and len(run) >= 4 and run[0] in ("a", "i"):
        return [run[0], "".join(run[1:])]
    return ["".join(run)]


def _words(text: str) -> list[str]:
    """The word stage on character-cleaned text."""
    parts = _WORD.split(text)
    words, gaps = parts[1::2], parts[2:-1:2]
    if any(len(w) == 1 for w in words):
        words = _collapse(words, gaps)
    words = [w for w in map(_clean_word, words) if w]
    # Dropping or joining words can line up new runs; each pass only shrinks the list.
    while any(len(w) == 1 for w in words):
        joined = [w for w in map(_clean_word, _collapse(words, [" "] * len(words))) if w]
        if joined == words:
            break
        words = joined
    return words


def normalize(text: str) -> str:
    """Normalise text for matching against a term list.

    Args:
        text: any text, e.g. a user's prompt or a term from a list.

    Returns:
        Lowercase words separated by single spaces (see the module docstring for the rules).
        Idempotent, and never raises for a ``str``.
    """
    return " ".join(_words(_clean_chars(text)))
