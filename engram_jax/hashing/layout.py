"""Hash layout: per-layer multipliers, head primes and table offsets.

A `HashLayout` is everything the N-gram hash needs besides the ids. It is
built once from the Engram config and the canonical vocabulary size V', and
both the numpy and the JAX hash read it.

Glossary: L Engram layers, N largest n-gram order, K hash heads per order,
G = (N - 1) * K hash heads per layer.

Rules (all exact integer arithmetic):
  * id_bound = max(V', pad_id + 1). M_max = floor((2^63 - 1) / id_bound) and
    half = max(1, M_max // 2).
  * Engram layer l (its block index) draws r = numpy
    `default_rng(seed + 10007 * l).integers(0, half, size=(N,), dtype=int64)`
    and uses the odd multipliers m_k = 2 * r_k + 1. m_k multiplies the token
    k steps back, so every product c * m_k is below 2^63.
  * Every (layer, order, head) gets its own prime: the consecutive primes
    >= vocab_per_ngram, assigned layer (list order) -> order (2..N) -> head.
  * One table per layer. Head slabs follow the order order-2 heads 0..K-1,
    order-3 heads 0..K-1, and so on. A head's offset is the sum of the primes
    before it in its layer, and the layer's logical row count is the sum of
    its primes.
"""

import dataclasses
import functools
import hashlib
import json
from typing import Any, Sequence

import numpy as np

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
# Seed stride between Engram layers: layer l seeds its generator with seed + 10007 * l.
LAYER_SEED_STRIDE = 10007
# Bases that make Miller-Rabin deterministic for every n < 3.3e24.
_MILLER_RABIN_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def is_prime(n: int) -> bool:
  """Test primality exactly (deterministic Miller-Rabin, n < 3.3e24)."""
  if n < 2:
    return False
  for p in _MILLER_RABIN_BASES:
    if n % p == 0:
      return n == p
  d, s = n - 1, 0
  while d % 2 == 0:
    d, s = d // 2, s + 1
  for a in _MILLER_RABIN_BASES:
    x = pow(a, d, n)
    if x in (1, n - 1):
      continue
    for _ in range(s - 1):
      x = x * x % n
      if x == n - 1:
        break
    else:
      return False
  return True


def consecutive_primes(start: int, count: int) -> list[int]:
  """Return the `count` smallest primes that are >= `start`."""
  primes = []
  n = max(start, 2)
  while len(primes) < count:
    if is_prime(n):
      primes.append(n)
    n += 1
  return primes


def layer_multipliers(layer_id: int, seed: int, max_ngram: int, id_bound: int) -> np.ndarray:
  """Draw the odd multipliers m_0..m_{N-1} (int64 [N]) of one Engram layer."""
  half = max(1, (INT64_MAX // id_bound) // 2)
  rng = np.random.default_rng(seed + LAYER_SEED_STRIDE * layer_id)
  draws = rng.integers(low=0, high=half, size=(max_ngram,), dtype=np.int64)
  return 2 * draws + 1


def _require_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name}={value!r} must be an integer.")
  if value < minimum:
    raise ValueError(f"{name}={value} must be at least {minimum}.")
  return int(value)


def _validate_layer_ids(layer_ids: Sequence[int]) -> tuple[int, ...]:
  layer_ids = tuple(_require_int("layer_ids entry", i, 0) for i in layer_ids)
  if not layer_ids or len(set(layer_ids)) != len(layer_ids):
    raise ValueError(f"layer_ids={layer_ids} must be a non-empty list of distinct block indices.")
  return layer_ids


def _frozen_int64(name: str, array: Any, shape: tuple[int, ...]) -> np.ndarray:
  array = np.asarray(array)
  if array.dtype != np.int64:
    raise TypeError(f"HashLayout.{name} has dtype {array.dtype}; expected int64.")
  if array.shape != shape:
    raise ValueError(f"HashLayout.{name} has shape {array.shape}; expected {shape}.")
  array = array.copy()
  array.flags.writeable = False
  return array


# Smallest valid value of each scalar layout field.
_SCALAR_MINIMUMS = {
    "num_canonical": 1, "pad_id": 0, "max_ngram": 2, "heads_per_ngram": 1,
    "vocab_per_ngram": 2, "seed": 0, "table_shards": 1,
}


@dataclasses.dataclass(frozen=True, eq=False)
class HashLayout:
  """Everything the N-gram hash needs besides the ids.

  The arrays are read-only int64 copies. Equality and hashing go through
  `fingerprint`, so a layout can be a static argument of `jax.jit`.
  """

  layer_ids: tuple[int, ...]  # block index of each Engram layer, in table order
  num_canonical: int  # V', the number of canonical ids
  pad_id: int  # id read at positions before the row start
  max_ngram: int  # largest order N; orders 2..N are hashed
  heads_per_ngram: int  # hash heads K per order
  vocab_per_ngram: int  # lower bound of the head primes
  seed: int  # base seed of the multipliers
  table_shards: int  # physical rows are padded to a multiple of this
  multipliers: np.ndarray  # int64 [L, N], column k multiplies the token k steps back
  primes: np.ndarray  # int64 [L, G] head primes in slab order
  offsets: np.ndarray  # int64 [L, G] first global row of each head's slab

  def __post_init__(self):
    object.__setattr__(self, "layer_ids", _validate_layer_ids(self.layer_ids))
    for name, minimum in _SCALAR_MINIMUMS.items():
      object.__setattr__(self, name, _require_int(name, getattr(self, name), minimum))
    shape_LN = (len(self.layer_ids), self.max_ngram)
    shape_LG = (len(self.layer_ids), self.heads)
    object.__setattr__(self, "multipliers", _frozen_int64("multipliers", self.multipliers, shape_LN))
    object.__setattr__(self, "primes", _frozen_int64("primes", self.primes, shape_LG))
    object.__setattr__(self, "offsets", _frozen_int64("offsets", self.offsets, shape_LG))
    self._check_invariants()

  def _check_invariants(self) -> None:
    """Raise ValueError unless pad, multipliers, offsets and row counts are consistent.

    The multiplier bound keeps every id * multiplier product below 2^63, and
    the row bound keeps every global row inside int32.
    """
    if not 0 <= self.pad_id <= self.num_canonical:
      raise ValueError(
          f"pad_id={self.pad_id} must be in [0, {self.num_canonical}]: a canonical id "
          f"or the reserved value num_canonical={self.num_canonical}.")
    largest_product = (self.id_bound - 1) * int(self.multipliers.max(initial=1))
    if self.multipliers.min(initial=1) < 1 or largest_product > INT64_MAX:
      raise ValueError(
          f"multipliers must lie in [1, floor((2^63 - 1) / id_bound)] with id_bound="
          f"{self.id_bound}, or id * multiplier overflows int64.")
    for layer, (primes_G, offsets_G) in enumerate(zip(self.primes, self.offsets)):
      expected_G = np.concatenate([[0], np.cumsum(primes_G)[:-1]])
      if not np.array_equal(offsets_G, expected_G):
        raise ValueError(f"offsets of layer index {layer} are not the running sums of its primes.")
    if max(self.physical_rows, default=0) > INT32_MAX + 1:
      raise ValueError(
          f"A table of {max(self.physical_rows)} rows does not fit int32 row ids; "
          "lower vocab_per_ngram.")

  @property
  def num_layers(self) -> int:
    return len(self.layer_ids)

  @property
  def heads(self) -> int:
    """Hash heads per layer, G = (N - 1) * K."""
    return (self.max_ngram - 1) * self.heads_per_ngram

  @property
  def id_bound(self) -> int:
    """Exclusive upper bound of every id the hash reads (canonical ids and the pad)."""
    return max(self.num_canonical, self.pad_id + 1)

  @property
  def table_rows(self) -> tuple[int, ...]:
    """Logical rows per layer: the sum of the layer's G primes."""
    return tuple(int(row_count) for row_count in self.primes.sum(axis=1))

  @property
  def physical_rows(self) -> tuple[int, ...]:
    """Rows per layer padded up to a multiple of `table_shards` (padding is never addressed)."""
    shards = self.table_shards
    return tuple(-(-rows // shards) * shards for rows in self.table_rows)

  def to_dict(self) -> dict[str, Any]:
    """Return every field as plain ints and lists, ready for JSON."""
    return {
        "layer_ids": list(self.layer_ids),
        "num_canonical": self.num_canonical,
        "pad_id": self.pad_id,
        "max_ngram": self.max_ngram,
        "heads_per_ngram": self.heads_per_ngram,
        "vocab_per_ngram": self.vocab_per_ngram,
        "seed": self.seed,
        "table_shards": self.table_shards,
        "multipliers": self.multipliers.tolist(),
        "primes": self.primes.tolist(),
        "offsets": self.offsets.tolist(),
    }

  @classmethod
  def from_dict(cls, fields: dict[str, Any]) -> "HashLayout":
    """Rebuild a layout from `to_dict()` output; the invariants are re-checked."""
    arrays = {name: np.asarray(fields[name], dtype=np.int64)
              for name in ("multipliers", "primes", "offsets")}
    return cls(**{**fields, **arrays})

  @functools.cached_property
  def fingerprint(self) -> str:
    """SHA-256 hex digest of `to_dict()`: it changes whenever any field changes."""
    text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, HashLayout):
      return NotImplemented
    return self.fingerprint == other.fingerprint

  def __hash__(self) -> int:
    return hash(self.fingerprint)


def build_layout(
    layer_ids: Sequence[int],
    num_canonical: int,
    *,
    vocab_per_ngram: int,
    max_ngram: int = 3,
    heads_per_ngram: int = 8,
    seed: int = 0,
    pad_id: int | None = None,
    table_shards: int = 1,
) -> HashLayout:
  """Build the hash layout of the given Engram layers.

  `pad_id=None` reserves the value `num_canonical`, which no token maps to.
  Pass `pad_id=0` to reproduce the reference, whose pad collides with the
  canonical id of raw token 0.
  """
  layer_ids = _validate_layer_ids(layer_ids)
  num_canonical = _require_int("num_canonical", num_canonical, 1)
  vocab_per_ngram = _require_int("vocab_per_ngram", vocab_per_ngram, 2)
  max_ngram = _require_int("max_ngram", max_ngram, 2)
  heads_per_ngram = _require_int("heads_per_ngram", heads_per_ngram, 1)
  seed = _require_int("seed", seed, 0)
  table_shards = _require_int("table_shards", table_shards, 1)
  pad_id = num_canonical if pad_id is None else _require_int("pad_id", pad_id, 0)
  id_bound = max(num_canonical, pad_id + 1)

  heads = (max_ngram - 1) * heads_per_ngram
  primes_LG = np.asarray(
      consecutive_primes(vocab_per_ngram, len(layer_ids) * heads), dtype=np.int64
  ).reshape(len(layer_ids), heads)
  offsets_LG = np.cumsum(primes_LG, axis=1) - primes_LG
  multipliers_LN = np.stack(
      [layer_multipliers(l, seed, max_ngram, id_bound) for l in layer_ids])
  return HashLayout(
      layer_ids=layer_ids, num_canonical=num_canonical, pad_id=pad_id,
      max_ngram=max_ngram, heads_per_ngram=heads_per_ngram,
      vocab_per_ngram=vocab_per_ngram, seed=seed, table_shards=table_shards,
      multipliers=multipliers_LN, primes=primes_LG, offsets=offsets_LG)


def layout_from_config(engram_cfg: Any, num_canonical: int, *, pad_id: int | None = None) -> HashLayout:
  """Build the layout from an `engram` config block.

  `engram_cfg.reference_pad=True` selects pad id 0 (reference parity);
  otherwise the pad is `pad_id`, or the reserved value `num_canonical` when
  `pad_id` is None.
  """
  if engram_cfg.reference_pad:
    if pad_id not in (None, 0):
      raise ValueError(
          f"pad_id={pad_id} conflicts with engram.reference_pad=True, which uses pad id 0; "
          "drop pad_id or set reference_pad=False.")
    pad_id = 0
  return build_layout(
      tuple(engram_cfg.layer_ids), num_canonical,
      vocab_per_ngram=engram_cfg.vocab_per_ngram,
      max_ngram=engram_cfg.max_ngram,
      heads_per_ngram=engram_cfg.heads_per_ngram,
      seed=engram_cfg.seed,
      pad_id=pad_id,
      table_shards=engram_cfg.table_shards)
