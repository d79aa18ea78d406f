from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safety.normalize import normalize

CASES = [
    # case, spacing, punctuation
    ("A Red  Car", "a red car"),
    ("  hello,\tworld!\n", "hello world"),
    ("", ""),
    ("!!! ... ---", ""),
    # separators inside a spelled-out word
    ("n.u.d.e", "nude"),
    ("n u d e", "nude"),
    ("n-u-d-e", "nude"),
    ("n_u_d_e", "nude"),
    ("p*o*r*n", "porn"),
    ("s-e-x-y woman", "sexy woman"),
    ("b l o w j o b", "blowjob"),
    ("a red car", "a red car"),  # runs of one single character stay
    ("x y plot", "x y plot"),  # two with a space stay
    ("e.g. a cat", "eg a cat"),  # two with punctuation join
    ("1.5 cups", "1 5 cups"),  # digits alone never join
    ("plan a b c", "plan abc"),  # documented: three spaced letters are read as a word
    # leetspeak, only in words that mix letters with digits or symbols
    ("p0rn", "porn"),
    ("n00dz", "noodz"),
    ("h3nt4i", "hentai"),
    ("$exy", "sexy"),
    ("a$$", "ass"),
    ("k!ll", "kill"),
    ("wow!", "wow"),
    ("s 3 x", "sex"),
    ("4 cats", "4 cats"),
    ("$100 and 42", "100 and 42"),
    ("4k 1080p 3d 35mm 1920s 2nd 12yo", "4k 1080p 3d 35mm 1920s 2nd 12yo"),
    # invisible characters, marks, look-alikes, compatibility forms
    ("nu\u200bde", "nude"),
    ("n\u00adu\u200cd\u200de\u2060\ufeff", "nude"),
    ("nüdé", "nude"),
    ("nu\u0308de\u0301", "nude"),
    ("nud\u0435", "nude"),  # Cyrillic small ie
    ("\u0420\u041erN", "porn"),  # Cyrillic capital er, o
    ("\u03a1\u03bfrn", "porn"),  # Greek capital rho, small omicron
    ("\u0397ELLO", "hello"),  # Greek capital eta reads as h
    ("\uff4e\uff55\uff44\uff45", "nude"),
    ("\U0001d427\U0001d42e\U0001d41d\U0001d41e", "nude"),  # mathematical bold
    ("\u24dd\u24e4\u24d3\u24d4", "nude"),  # circled letters
    ("\ufb01ne", "fine"),
    ("Straße", "strasse"),
    ("٣ cats", "3 cats"),  # Arabic-Indic digit
    ("child's drawing", "childs drawing"),
    ("rock \u2019n\u2019 roll", "rock n roll"),
    ("Kim Jong-un", "kim jong un"),
    ("J.D. Vance", "jd vance"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_normalize_cases(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_normalized_cases_are_fixed_points(text: str, expected: str) -> None:
    assert normalize(expected) == expected


def test_every_basic_plane_character_is_idempotent() -> None:
    for code in range(0x10000):
        text = f"a{chr(code)}b {chr(code)} x{chr(code)}y{chr(code)}z"
        once = normalize(text)
        assert normalize(once) == once, hex(code)


def test_output_alphabet() -> None:
    out = normalize("".join(chr(c) for c in range(0x20, 0x3000)))
    assert out == out.strip()
    assert "  " not in out
    assert out == out.casefold()


TRICKY = st.sampled_from(
    [
        *"abcdenorsuxyz AIOSX.-_*/'!$@€¡013457892",
        *["\u200b", "\u00ad", "\u0301", "\u0308", "\u0435", "\u0397", "\u03b7", "\uff4e", "ß", "İ", "ﬁ"],
        *["\u1100", "\u1161", "\uac00", "\u0345", "\u2028", "\x00", "\t", "٣", "\U0001d427"],
    ]
)


@settings(max_examples=500)
@given(st.text(alphabet=TRICKY, max_size=40))
def test_idempotent_on_tricky_text(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once


@settings(max_examples=500)
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=60))
def test_idempotent_on_any_text(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once
    assert "  " not in once
    assert once == once.strip()


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "\x00\x1f\x7f", "\U0010ffff\U000e0001", "\u0345" * 5])
def test_surrogates_controls_and_unassigned(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=sys.maxunicode, exclude_categories=())))
def test_never_raises(text: str) -> None:
    assert isinstance(normalize(text), str)
