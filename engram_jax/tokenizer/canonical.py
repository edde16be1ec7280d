"""Canonical-collapse map: raw token ids -> canonical ids for the Engram n-gram hash.

Tokens that differ only in case, accents, Unicode compatibility form or
surrounding whitespace share a canonical id, so "Hello", " hello" and "HELLO"
hash to the same n-gram rows. The map depends on the tokenizer and on the
`tokenizers` normalizer implementation, so it is saved with the fingerprint of
the tokenizer it was built from and the `tokenizers` version.
"""

import dataclasses

import numpy as np
import tokenizers
from tokenizers import normalizers

from engram_jax.tokenizer.bpe import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
# Private-use character that replaces a lone space while surrounding whitespace
# is stripped, so a whitespace-only token does not become "".
SPACE_SENTINEL = "\ue000"


def make_normalizer() -> normalizers.Normalizer:
  """Return NFKC, NFD, accent stripping, lowercasing, whitespace runs -> one space."""
  return normalizers.Sequence([
      normalizers.NFKC(),
      normalizers.NFD(),
      normalizers.StripAccents(),
      normalizers.Lowercase(),
      normalizers.Replace(tokenizers.Regex(r"[ \t\r\n]+"), " "),
  ])


def canonical_key(text: str, normalizer: normalizers.Normalizer) -> str | None:
  """Return the collapse key of one token's decoded text, or None for a private key.

  Text with U+FFFD (a partial UTF-8 token) gets None, so such tokens never merge.
  A text that normalises to the empty string keeps its raw text as key.
  """
  if REPLACEMENT_CHAR in text:
    return None
  normalized = normalizer.normalize_str(text)
  if normalized == " ":
    normalized = SPACE_SENTINEL
  normalized = normalized.strip().replace(SPACE_SENTINEL, " ")
  return normalized if normalized else text


@dataclasses.dataclass(frozen=True, eq=False)
class CanonicalMap:
  """Raw id -> canonical id table with its pad id and provenance.

  Attributes:
    raw_to_canonical: int32 [V], read-only. Canonical ids are numbered by first
      appearance over raw ids 0..V-1, so raw id 0 maps to 0.
    num_canonical: V', the number of distinct canonical ids of real tokens.
    pad_id: canonical id used before the first token of a sequence. By default
      it is V', a value no raw token maps to, so lookups need V' + 1 ids. The
      reference used 0, the canonical id of byte 0x00, which collides with that
      real token; `reference_pad=True` reproduces it for parity runs only.
    reference_pad: True when pad_id is the reference's colliding 0.
    fingerprint: fingerprint of the tokenizer the map was built from.
    tokenizers_version: `tokenizers` version whose normalizers built the map.
  """

  raw_to_canonical: np.ndarray
  num_canonical: int
  pad_id: int
  reference_pad: bool
  fingerprint: str
  tokenizers_version: str = tokenizers.__version__

  def __post_init__(self):
    table_V = np.array(self.raw_to_canonical, dtype=np.int32, copy=True)
    if table_V.ndim != 1 or table_V.size == 0:
      raise ValueError(
          f"raw_to_canonical must be a non-empty 1-D array, got shape {table_V.shape}."
      )
    if not np.array_equal(np.asarray(self.raw_to_canonical), table_V):
      raise ValueError("raw_to_canonical must contain integers that fit int32.")
    used = np.unique(table_V)
    if used[0] != 0 or used[-1] != self.num_canonical - 1 or used.size != self.num_canonical:
      raise ValueError(
          f"raw_to_canonical must use every canonical id 0..{self.num_canonical - 1} "
          f"(num_canonical={self.num_canonical}); it uses {used.size} ids in {used[0]}..{used[-1]}."
      )
    self._check_pad()
    table_V.setflags(write=False)
    object.__setattr__(self, "raw_to_canonical", table_V)

  def _check_pad(self) -> None:
    if self.reference_pad:
      if self.pad_id != 0:
        raise ValueError(f"reference_pad=True requires pad_id=0, got {self.pad_id}.")
      return
    if self.pad_id < self.num_canonical:
      raise ValueError(
          f"pad_id={self.pad_id} equals the canonical id of a real token; use pad_id="
          f"{self.num_canonical} (reserved), or reference_pad=True to reproduce the "
          "reference's pad 0."
      )
    if self.pad_id != self.num_canonical:
      raise ValueError(
          f"pad_id={self.pad_id} leaves a gap; the reserved pad is {self.num_canonical}."
      )

  @property
  def vocab_size(self) -> int:
    """Number of raw ids V the map covers."""
    return int(self.raw_to_canonical.shape[0])

  @property
  def num_ids(self) -> int:
    """Size of the canonical id space including pad: V' + 1, or V' with reference_pad."""
    return self.num_canonical if self.reference_pad else self.num_canonical + 1

  def with_reference_pad(self, reference_pad: bool) -> "CanonicalMap":
    """Return the same map with the reserved pad (False) or the reference pad 0 (True)."""
    return dataclasses.replace(
        self, reference_pad=reference_pad, pad_id=0 if reference_pad else self.num_canonical
    )

  def canonicalize(self, raw_ids) -> np.ndarray:
    """Map an integer array of raw ids (any shape) to int32 canonical ids."""
    ids = np.asarray(raw_ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
      raise TypeError(f"raw_ids must contain integers, got dtype {ids.dtype}.")
    bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
    if bad.size:
      value = int(ids.reshape(-1)[bad[0]])
      raise ValueError(
          f"raw id {value} at flat index {int(bad[0])} is outside 0..{self.vocab_size - 1}; "
          "check that the ids come from the tokenizer this map was built for."
      )
    return self.raw_to_canonical[ids.astype(np.int64, copy=False)]


def build_canonical_map(tokenizer: Tokenizer, *, reference_pad: bool = False) -> CanonicalMap:
  """Build the collapse map of `tokenizer`, scanning raw ids in ascending order."""
  normalizer = make_normalizer()
  encoding = tokenizer.encoding
  key_to_id: dict[str, int] = {}
  table_V = np.empty(tokenizer.vocab_size, dtype=np.int32)
  num_private = 0
  for raw_id in range(tokenizer.vocab_size):
    key = canonical_key(encoding.decode([raw_id]), normalizer)
    if key is None:
      table_V[raw_id] = len(key_to_id) + num_private
      num_private += 1
    else:
      table_V[raw_id] = key_to_id.setdefault(key, len(key_to_id) + num_private)
  num_canonical = len(key_to_id) + num_private
  return CanonicalMap(
      raw_to_canonical=table_V,
      num_canonical=num_canonical,
      pad_id=0 if reference_pad else num_canonical,
      reference_pad=reference_pad,
      fingerprint=tokenizer.fingerprint,
  )
