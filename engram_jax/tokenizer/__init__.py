"""Byte-level BPE tokenizer, token byte lengths and the canonical-collapse map."""

from engram_jax.tokenizer.bpe import BYTE_LENGTH_RULES
from engram_jax.tokenizer.bpe import SPLIT_PATTERN
from engram_jax.tokenizer.bpe import Tokenizer
from engram_jax.tokenizer.bpe import train_bpe
from engram_jax.tokenizer.bpe import unreachable_tokens
from engram_jax.tokenizer.canonical import CanonicalMap
from engram_jax.tokenizer.canonical import build_canonical_map
from engram_jax.tokenizer.files import load_byte_lengths
from engram_jax.tokenizer.files import load_canonical_map
from engram_jax.tokenizer.files import load_tokenizer
from engram_jax.tokenizer.files import load_tokenizer_bundle
from engram_jax.tokenizer.files import save_byte_lengths
from engram_jax.tokenizer.files import save_canonical_map
from engram_jax.tokenizer.files import save_tokenizer
from engram_jax.tokenizer.files import save_tokenizer_bundle

__all__ = [
    "BYTE_LENGTH_RULES",
    "SPLIT_PATTERN",
    "CanonicalMap",
    "Tokenizer",
    "build_canonical_map",
    "load_byte_lengths",
    "load_canonical_map",
    "load_tokenizer",
    "load_tokenizer_bundle",
    "save_byte_lengths",
    "save_canonical_map",
    "save_tokenizer",
    "save_tokenizer_bundle",
    "train_bpe",
    "unreachable_tokens",
]
