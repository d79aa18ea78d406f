"""The real CLIP tokenizer, written offline from the BPE vocabulary that open_clip ships.

No model hub is reachable here, but ``open_clip_torch`` bundles OpenAI's
``bpe_simple_vocab_16e6.txt.gz``. From it we build ``vocab.json`` + ``merges.txt`` exactly the way
open_clip's ``SimpleTokenizer`` builds its encoder, so a transformers :class:`CLIPTokenizer` loaded
from them gives the same ids as ``openai/clip-vit-large-patch14`` (the Stable Diffusion tokenizer).

open_clip is located with :func:`importlib.util.find_spec` and never imported: importing it pulls
in torchvision, which we do not install.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import tempfile
from pathlib import Path

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

logger = logging.getLogger(__name__)

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
VOCAB_SIZE = 49408
# open_clip keeps the merges between the header line and this index (SimpleTokenizer.__init__).
_MERGES_END = 49152 - 256 - 2 + 1


def bundled_bpe_path() -> Path:
    """Return the path of the BPE vocabulary shipped inside the ``open_clip_torch`` package.

    Raises:
        FileNotFoundError: open_clip is not installed or its data file is missing.
    """
    spec = importlib.util.find_spec("open_clip")
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise FileNotFoundError(f"package 'open_clip' (open_clip_torch) is not installed; it ships {BPE_FILENAME}")
    path = Path(next(iter(locations))) / BPE_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocabulary not found at {path}")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes, strict=True)}


def _read_merges(bpe_path: Path) -> list[str]:
    with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    return lines[1:_MERGES_END]


def write_clip_tokenizer(directory: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` for the CLIP tokenizer into ``directory``.

    Args:
        directory: Target directory; created if missing.

    Raises:
        FileNotFoundError: open_clip's BPE vocabulary cannot be found.
        ValueError: The vocabulary file does not yield the 49408 CLIP tokens.
    """
    merges = _read_merges(bundled_bpe_path())
    symbols = list(_bytes_to_unicode().values())
    vocab = [*symbols, *(symbol + "</w>" for symbol in symbols), *(merge.replace(" ", "") for merge in merges)]
    vocab += [BOS_TOKEN, EOS_TOKEN]
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}")
    directory.mkdir(parents=True, exist_ok=True)
    encoder = {token: index for index, token in enumerate(vocab)}
    (directory / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def load_clip_tokenizer() -> CLIPTokenizer:
    """Build a transformers ``CLIPTokenizer`` with the real CLIP vocabulary, offline.

    Padding uses ``<|endoftext|>`` and sequences are capped at 77 tokens, as in the Stable Diffusion
    tokenizer (pipelines pad to ``model_max_length``, so it must be set).

    Returns:
        A fresh tokenizer; callers may mutate it freely.
    """
    # The loaded tokenizer keeps its vocabulary in memory, so the files need not outlive the load.
    with tempfile.TemporaryDirectory(prefix="imaginebot-clip-tokenizer-") as directory:
        write_clip_tokenizer(Path(directory))
        tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(
            directory, model_max_length=MODEL_MAX_LENGTH, pad_token=EOS_TOKEN, local_files_only=True
        )
    logger.debug("loaded CLIP tokenizer with %d tokens", len(tokenizer))
    return tokenizer


def clip_text_encoder(
    tokenizer: CLIPTokenizer, *, width: int, intermediate: int, layers: int, heads: int
) -> CLIPTextModel:
    """A freshly initialised ``CLIPTextModel`` over this tokenizer's vocabulary and special tokens."""
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MODEL_MAX_LENGTH,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)
