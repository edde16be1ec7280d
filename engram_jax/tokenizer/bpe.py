"""Byte-level BPE: training with HuggingFace `tokenizers`, encoding with tiktoken.

Id layout of a tokenizer with vocabulary V:

  0..255        the 256 single bytes, id b = byte b
  256..V-10     learned merges in the order the trainer created them
  V-9..V-1      the special tokens of `config.SPECIAL_TOKENS`, <|bos|> first

tiktoken ranks a candidate pair by the rank of the concatenated bytes, while
HuggingFace ranks it by the merge list. Numbering merged tokens in creation
order makes the two agree in practice, as `unreachable_tokens` and tests check.
"""

import functools
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np
import tiktoken
import tokenizers
from tokenizers import models as hf_models
from tokenizers import pre_tokenizers as hf_pre_tokenizers
from tokenizers import trainers as hf_trainers

from engram_jax.config import SPECIAL_TOKENS

# GPT-4 (cl100k) split pattern, except digits group in runs of at most two.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
ENCODING_NAME = "engram-bpe"
BYTE_LENGTH_RULES = ("raw", "reference")
_NUM_BYTES = 256
_SURROGATE = re.compile("[\ud800-\udfff]")
_TRAIN_BATCH_DOCS = 1024


def _byte_to_unicode() -> dict[int, str]:
  """Return the GPT-2 byte-to-character table that HF ByteLevel uses.

  Printable Latin-1 bytes stand for themselves; the other 68 bytes take the
  characters U+0100 upward in byte order.
  """
  printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
  table, shifted = {}, 0
  for b in range(_NUM_BYTES):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(_NUM_BYTES + shifted)
      shifted += 1
  return table


BYTE_TO_UNICODE = _byte_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


def check_text(text: Any, *, errors: str = "strict", where: str = "text") -> str:
  """Return `text` ready for UTF-8 encoding, or raise on non-str or lone surrogates.

  errors="strict" raises ValueError at the first surrogate code point.
  errors="replace" joins valid surrogate pairs into their character and turns
  lone surrogates into U+FFFD (the same fix-up tiktoken applies silently).
  """
  if not isinstance(text, str):
    raise TypeError(f"{where} must be str, got {type(text).__name__}; decode bytes to str first.")
  match = None if text.isascii() else _SURROGATE.search(text)
  if match is None:
    return text
  if errors == "replace":
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
  if errors != "strict":
    raise ValueError(f"errors={errors!r} is not supported; use 'strict' or 'replace'.")
  raise ValueError(
      f"{where} contains the lone surrogate U+{ord(match.group()):04X} at index "
      f"{match.start()}, which has no UTF-8 encoding. Fix the decoding that produced "
      "the string, or pass errors='replace' to substitute U+FFFD."
  )


def _check_ranks(ranks: Mapping[bytes, int]) -> None:
  if sorted(ranks.values()) != list(range(len(ranks))):
    raise ValueError("mergeable_ranks must number the tokens 0..n-1 with no gap or repeat.")
  for b in range(_NUM_BYTES):
    if ranks.get(bytes([b])) != b:
      raise ValueError(f"mergeable_ranks must map the single byte {b:#04x} to id {b}.")


class Tokenizer:
  """Byte-level BPE tokenizer over a tiktoken encoding with specials after the merges.

  Text that looks like a special token is always encoded as ordinary text;
  special ids (such as <|bos|>) are only ever inserted by id.
  """

  def __init__(
      self,
      mergeable_ranks: Mapping[bytes, int],
      *,
      pattern: str = SPLIT_PATTERN,
      special_tokens: Sequence[str] = SPECIAL_TOKENS,
      training_info: Mapping[str, Any] | None = None,
  ):
    _check_ranks(mergeable_ranks)
    if len(set(special_tokens)) != len(special_tokens) or SPECIAL_TOKENS[0] not in special_tokens:
      raise ValueError(
          f"special_tokens must be distinct and include {SPECIAL_TOKENS[0]!r}, "
          f"got {special_tokens!r}."
      )
    self._ranks = dict(mergeable_ranks)
    self._pattern = pattern
    num_ordinary = len(self._ranks)
    self._special_ids = {name: num_ordinary + i for i, name in enumerate(special_tokens)}
    self._vocab_size = num_ordinary + len(self._special_ids)
    self._encoding = tiktoken.Encoding(
        name=ENCODING_NAME,
        pat_str=pattern,
        mergeable_ranks=self._ranks,
        special_tokens=self._special_ids,
        explicit_n_vocab=self._vocab_size,
    )
    self.training_info = dict(training_info or {})

  @property
  def encoding(self) -> tiktoken.Encoding:
    return self._encoding

  @property
  def vocab_size(self) -> int:
    """Number of ids V, special tokens included."""
    return self._vocab_size

  @property
  def num_ordinary(self) -> int:
    """Number of byte and merged tokens, V minus the special tokens."""
    return len(self._ranks)

  @property
  def pattern(self) -> str:
    return self._pattern

  @property
  def mergeable_ranks(self) -> dict[bytes, int]:
    """A copy of the token bytes -> id table of the ordinary tokens."""
    return dict(self._ranks)

  @property
  def special_ids(self) -> dict[str, int]:
    """Special token text -> id, in id order."""
    return dict(self._special_ids)

  @property
  def bos_id(self) -> int:
    return self._special_ids[SPECIAL_TOKENS[0]]

  @functools.cached_property
  def fingerprint(self) -> str:
    """SHA-256 hex digest of ranks, pattern and special ids, recorded by every derived file."""
    from engram_jax.tokenizer import files  # pylint: disable=g-import-not-at-top

    return files.compute_fingerprint(self._ranks, self._pattern, self._special_ids)

  def encode(self, text: str, *, prepend_bos: bool = False, errors: str = "strict") -> list[int]:
    """Encode `text` as ordinary text. `check_text` describes `errors`."""
    ids = self._encoding.encode_ordinary(check_text(text, errors=errors))
    return [self.bos_id, *ids] if prepend_bos else ids

  def encode_batch(
      self,
      texts: Sequence[str],
      *,
      prepend_bos: bool = False,
      num_threads: int = 8,
      errors: str = "strict",
  ) -> list[list[int]]:
    """Encode each text as ordinary text, using `num_threads` tiktoken threads."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
      raise TypeError(
          f"texts must be a list of str, got {type(texts).__name__}; wrap one text in a list."
      )
    checked = [check_text(t, errors=errors, where=f"texts[{i}]") for i, t in enumerate(texts)]
    batch = self._encoding.encode_ordinary_batch(checked, num_threads=num_threads)
    if prepend_bos:
      batch = [[self.bos_id, *ids] for ids in batch]
    return batch

  def _check_ids(self, ids: Any) -> list[int]:
    ids_N = np.asarray(ids)
    if ids_N.size == 0:
      return []
    if ids_N.ndim != 1 or not np.issubdtype(ids_N.dtype, np.integer):
      raise TypeError(
          f"ids must be a 1-D sequence of integers, got dtype {ids_N.dtype} "
          f"and shape {ids_N.shape}."
      )
    bad_N = np.flatnonzero((ids_N < 0) | (ids_N >= self._vocab_size))
    if bad_N.size:
      pos = int(bad_N[0])
      raise ValueError(
          f"ids[{pos}]={int(ids_N[pos])} is not a token id; valid ids are 0..{self._vocab_size - 1}"
          f" ({bad_N.size} invalid in all). Check that the ids come from this tokenizer."
      )
    return ids_N.tolist()

  def decode(self, ids: Sequence[int], *, errors: str = "replace") -> str:
    """Decode ids to text; incomplete UTF-8 becomes U+FFFD unless errors="strict"."""
    return self._encoding.decode(self._check_ids(ids), errors=errors)

  def token_bytes(self, token_id: int) -> bytes:
    """Return the bytes of one id; a special token returns its literal text."""
    if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
      raise TypeError(f"token_id must be an int, got {type(token_id).__name__}.")
    (checked,) = self._check_ids([token_id])
    return self._encoding.decode_single_token_bytes(checked)

  def byte_lengths(self, rule: str = "raw") -> np.ndarray:
    """Return int32 [V] token byte lengths under `rule`, with 0 for special tokens.

    "raw" counts the token's bytes. "reference" counts the UTF-8 length of the
    token decoded with replacement, so each U+FFFD of a partial UTF-8 token
    counts 3 bytes. Bits-per-byte numbers are comparable only under one rule.
    """
    if rule not in BYTE_LENGTH_RULES:
      raise ValueError(f"rule={rule!r} is not a byte-length rule; use one of {BYTE_LENGTH_RULES}.")
    lengths_V = np.zeros(self._vocab_size, dtype=np.int32)
    for token, rank in self._ranks.items():
      if rule == "raw":
        lengths_V[rank] = len(token)
      else:
        lengths_V[rank] = len(token.decode("utf-8", errors="replace").encode("utf-8"))
    return lengths_V

  def save(self, directory: str | os.PathLike, *, overwrite: bool = False):
    """Write the tokenizer files and both byte-length files with `files.save_tokenizer`."""
    from engram_jax.tokenizer import files  # pylint: disable=g-import-not-at-top

    return files.save_tokenizer(directory, self, overwrite=overwrite)

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "Tokenizer":
    """Read a tokenizer written by `save`, checked by `files.load_tokenizer`."""
    from engram_jax.tokenizer import files  # pylint: disable=g-import-not-at-top

    return files.load_tokenizer(directory)

  def __repr__(self) -> str:
    return f"Tokenizer(vocab_size={self._vocab_size}, fingerprint={self.fingerprint[:12]})"


def unreachable_tokens(tokenizer: Tokenizer) -> list[int]:
  """Return ordinary ids that tiktoken does not produce when encoding their own bytes."""
  # NOTE: `_encode_single_piece` is tiktoken's private BPE call without the regex
  # split. tiktoken 0.14 has it, and setup.py pins tiktoken below 0.15.
  encoding = tokenizer.encoding
  return [
      rank
      for token, rank in tokenizer.mergeable_ranks.items()
      if encoding._encode_single_piece(token) != [rank]  # pylint: disable=protected-access
  ]


def _training_batches(
    texts: Iterable[str], max_chars: int | None, doc_cap_chars: int | None, stats: dict[str, int]
) -> Iterator[list[str]]:
  """Yield capped, validated documents in batches and count them into `stats`."""
  batch = []
  for index, text in enumerate(texts):
    text = check_text(text, where=f"training document {index}")
    if doc_cap_chars is not None and len(text) > doc_cap_chars:
      text = text[:doc_cap_chars]
      stats["capped_documents"] += 1
    if max_chars is not None:
      text = text[: max_chars - stats["characters"]]
    stats["documents"] += 1
    stats["characters"] += len(text)
    batch.append(text)
    if len(batch) == _TRAIN_BATCH_DOCS:
      yield batch
      batch = []
    if max_chars is not None and stats["characters"] >= max_chars:
      break
  if batch:
    yield batch


def train_hf_bpe(
    batches: Iterable[Any], num_ordinary: int, *, pattern: str = SPLIT_PATTERN
) -> tokenizers.Tokenizer:
  """Train a HuggingFace byte-level BPE with `num_ordinary` tokens (256 bytes included).

  `batches` yields str or lists of str. The trainer stops early when the corpus
  has no pair left to merge, so the result may hold fewer tokens.
  """
  model = hf_models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False)
  hf_tokenizer = tokenizers.Tokenizer(model)
  hf_tokenizer.pre_tokenizer = hf_pre_tokenizers.Sequence([
      hf_pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated", invert=False),
      hf_pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  trainer = hf_trainers.BpeTrainer(
      vocab_size=num_ordinary,
      min_frequency=0,
      show_progress=False,
      special_tokens=[],
      initial_alphabet=hf_pre_tokenizers.ByteLevel.alphabet(),
  )
  hf_tokenizer.train_from_iterator(batches, trainer=trainer)
  return hf_tokenizer


def mergeable_ranks_from_hf(hf_tokenizer: tokenizers.Tokenizer) -> dict[bytes, int]:
  """Return tiktoken ranks: bytes 0..255, then each new merged token in merge order."""
  model = hf_tokenizer.model
  if not isinstance(model, hf_models.BPE):
    raise TypeError(f"expected a BPE model, got {type(model).__name__}.")
  ranks = {bytes([b]): b for b in range(_NUM_BYTES)}
  # Two merges can build the same bytes ("ab"+"c" and "a"+"bc"). tiktoken needs
  # the token once, so it keeps the rank of its first creation.
  merges = json.loads(hf_tokenizer.to_str())["model"]["merges"]
  for merge in merges:
    # Older `tokenizers` versions store a merge as "left right", newer ones as a pair.
    left, right = merge.split(" ") if isinstance(merge, str) else merge
    token = bytes(UNICODE_TO_BYTE[c] for c in left + right)
    ranks.setdefault(token, len(ranks))
  vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=False)
  if len(ranks) != vocab_size:
    raise ValueError(
        f"the HF merge list gives {len(ranks)} tokens, but its vocabulary has {vocab_size}."
    )
  return ranks


def _check_train_args(vocab_size: int, max_chars: int | None, doc_cap_chars: int | None) -> None:
  minimum = _NUM_BYTES + len(SPECIAL_TOKENS)
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < minimum:
    raise ValueError(
        f"vocab_size={vocab_size!r} cannot hold the {_NUM_BYTES} byte tokens and "
        f"{len(SPECIAL_TOKENS)} special tokens; use at least {minimum} "
        "(8192 for tiny runs, 32768 for the reference)."
    )
  for name, value in (("max_chars", max_chars), ("doc_cap_chars", doc_cap_chars)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise ValueError(f"{name}={value!r} must be a positive int or None (no limit).")


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    max_chars: int | None = None,
    doc_cap_chars: int | None = 10_000,
    pattern: str = SPLIT_PATTERN,
) -> Tokenizer:
  """Train a BPE tokenizer with exactly `vocab_size` ids, specials included.

  Each document is cut to `doc_cap_chars` characters and training stops after
  `max_chars` characters in all (None: no limit). Raises ValueError when the
  corpus runs out of pairs to merge before reaching `vocab_size`, instead of
  returning a smaller vocabulary that would not match the model config.
  """
  _check_train_args(vocab_size, max_chars, doc_cap_chars)
  num_ordinary = vocab_size - len(SPECIAL_TOKENS)
  stats = {"documents": 0, "characters": 0, "capped_documents": 0}
  start = time.perf_counter()
  batches = _training_batches(texts, max_chars, doc_cap_chars, stats)
  hf_tokenizer = train_hf_bpe(batches, num_ordinary, pattern=pattern)
  ranks = mergeable_ranks_from_hf(hf_tokenizer)
  seconds = time.perf_counter() - start
  if stats["characters"] == 0:
    raise ValueError("texts yielded no characters; pass a non-empty training corpus.")
  if len(ranks) < num_ordinary:
    message = (
        f"the corpus ({stats['characters']} characters in {stats['documents']} documents) "
        f"yields only {len(ranks) - _NUM_BYTES} merges, but vocab_size={vocab_size} needs "
        f"{num_ordinary - _NUM_BYTES}. "
        f"Train on more text or use vocab_size <= {len(ranks) + len(SPECIAL_TOKENS)}."
    )
    logging.error("[tokenizer] %s", message)
    raise ValueError(message)
  info = dict(stats, max_chars=max_chars, doc_cap_chars=doc_cap_chars)
  info["tokenizers_version"] = tokenizers.__version__
  tokenizer = Tokenizer(ranks, pattern=pattern, training_info=info)
  logging.info(
      "[tokenizer] trained V=%d on %s in %.1fs; fingerprint %s",
      vocab_size, stats, seconds, tokenizer.fingerprint,
  )
  unreachable = unreachable_tokens(tokenizer)
  if unreachable:
    logging.warning(
        "[tokenizer] %d merged tokens are unreachable by tiktoken, e.g. ids %s",
        len(unreachable), unreachable[:10],
    )
  return tokenizer
