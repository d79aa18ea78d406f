"""The offline CLIP tokenizer gives the real openai/CLIP token ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, load_clip_tokenizer, write_clip_tokenizer

BOS, EOS = 49406, 49407


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        # Ids from the reference openai CLIP tokenizer (clip.tokenize / openai/clip-vit-large-patch14).
        ("a photo of a cat", [BOS, 320, 1125, 539, 320, 2368, EOS]),
        ("a diagram", [BOS, 320, 22697, EOS]),
        ("a dog", [BOS, 320, 1929, EOS]),
        ("Hello World!", [BOS, 3306, 1002, 256, EOS]),
    ],
)
def test_ids_match_real_clip(text: str, ids: list[int]) -> None:
    assert load_clip_tokenizer()(text).input_ids == ids


def test_pads_with_end_of_text_and_truncates_to_77() -> None:
    tokenizer = load_clip_tokenizer()
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH
    assert tokenizer.pad_token == "<|endoftext|>"
    padded = tokenizer("a cat", padding="max_length", max_length=MODEL_MAX_LENGTH).input_ids
    assert padded[:4] == [BOS, 320, 2368, EOS]
    assert padded[4:] == [EOS] * (MODEL_MAX_LENGTH - 4)
    truncated = tokenizer("cat " * 200, truncation=True, max_length=MODEL_MAX_LENGTH).input_ids
    assert len(truncated) == MODEL_MAX_LENGTH
    assert truncated[0] == BOS
    assert truncated[-1] == EOS


def test_decode_round_trips() -> None:
    tokenizer = load_clip_tokenizer()
    ids = tokenizer("an astronaut riding a horse", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == "an astronaut riding a horse"


def test_written_files_have_the_full_vocabulary(tmp_path: Path) -> None:
    write_clip_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == VOCAB_SIZE
    assert vocab["<|startoftext|>"] == BOS
    assert vocab["<|endoftext|>"] == EOS
    assert merges[0] == "#version: 0.2"
    assert len(merges) - 1 == 49152 - 256 - 2
