"""N-gram hash in JAX, bit-exact with the numpy int64 version and jit-able.

The hash needs exact 64-bit products, XORs and remainders. With x64 off
(the default) these are emulated on (hi, lo) uint32 words, so the rows equal
`hash_rows_np` for every valid id and salt. The mix, the pad rule and the
reset-at-BOS rule are the ones documented in `numpy_hash`.

Id checks: numpy inputs and concrete JAX arrays are checked eagerly and raise
ValueError. Ids traced under `jax.jit` cannot raise there, so the range check
is a `checkify.check(..., debug=True)`. Wrap the jitted function with
`jax.experimental.checkify.checkify` to enforce it.
NOTE: under plain jit the check is skipped, and an out-of-range traced id
yields wrong rows (still inside the table) instead of an error.

Glossary: L Engram layers, B batch, T sequence, O = N - 1 hashed orders,
K hash heads per order, G = O * K hash heads.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from engram_jax.hashing import uint64
from engram_jax.hashing.layout import INT32_MAX, HashLayout
from engram_jax.hashing.numpy_hash import (
    check_id_range, require_integer_array, validate_ids_np, validate_reset_id, validate_salt)


def check_jax_layout(layout: HashLayout) -> None:
  """Raise ValueError when the layout needs more than the uint32 emulation supports."""
  largest_prime = int(layout.primes.max())
  if largest_prime >= uint64.MAX_MODULUS:
    raise ValueError(
        f"The JAX hash supports head primes below 2^24, but this layout has prime "
        f"{largest_prime} (vocab_per_ngram={layout.vocab_per_ngram}); lower vocab_per_ngram "
        "or hash on the host with hash_rows_np.")
  if layout.id_bound - 1 > INT32_MAX:
    raise ValueError(
        f"The JAX hash reads int32 ids, but id_bound={layout.id_bound} exceeds 2^31; "
        "hash on the host with hash_rows_np.")


def _is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _require_integer_dtype(x: jax.Array, name: str) -> None:
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f"{name} has dtype {x.dtype}; pass an integer array.")


def check_ids_jax(ids: jax.Array, bound: int, name: str = "canonical ids") -> None:
  """Add a checkify check that every id lies in [0, bound).

  The check fails only inside `checkify.checkify`. Plain jit and eager calls skip it.
  """
  if ids.size == 0:
    return
  in_range = jnp.all((ids >= 0) & (ids < bound))
  checkify.check(
      in_range, f"{name} must lie in [0, {bound}); found min {{low}} and max {{high}}.",
      low=jnp.min(ids), high=jnp.max(ids), debug=True)


def prepare_ids_jax(canonical_ids_BT: Any, layout: HashLayout) -> jax.Array:
  """Check ids for hashing and return them as a uint32 [B, T] JAX array.

  numpy inputs and concrete JAX arrays are range-checked eagerly, before any
  narrowing to 32 bits. Traced ids get a checkify check (see the module doc).
  """
  if not isinstance(canonical_ids_BT, jax.Array):
    return jnp.asarray(validate_ids_np(canonical_ids_BT, layout).astype(np.uint32))

  _require_integer_dtype(canonical_ids_BT, "canonical_ids_BT")
  if canonical_ids_BT.ndim != 2:
    raise ValueError(
        f"canonical_ids_BT has shape {canonical_ids_BT.shape}; expected 2-D [B, T]. "
        "Pass one sequence as ids[None, :].")
  if not _is_traced(canonical_ids_BT):
    validate_ids_np(np.asarray(canonical_ids_BT), layout)
  ids_BT = canonical_ids_BT
  if ids_BT.dtype.itemsize < 4:
    # Widening is lossless, and an int8 or int16 dtype cannot represent the bound.
    ids_BT = ids_BT.astype(jnp.int32)
  check_ids_jax(ids_BT, layout.id_bound)
  return ids_BT.astype(jnp.uint32)


def canonicalize_jax(raw_ids: Any, canonical_map: Any, *, num_canonical: int | None = None) -> jax.Array:
  """Map raw token ids (any shape) to canonical ids (int32) through `canonical_map`.

  A concrete map or concrete ids are range-checked eagerly and raise
  ValueError. Traced raw ids outside [0, V) get a checkify check and map to
  -1 instead of being clamped, so the hash's checkify check rejects them too.
  """
  if _is_traced(canonical_map):
    _require_integer_dtype(canonical_map, "canonical_map")
  else:
    map_V = require_integer_array(canonical_map, "canonical_map")
    bound = INT32_MAX + 1 if num_canonical is None else min(num_canonical, INT32_MAX + 1)
    if map_V.ndim != 1:
      raise ValueError(f"canonical_map has shape {map_V.shape}; expected 1-D [V].")
    check_id_range(map_V, bound, "canonical_map value",
                   "the map must send every raw id to a canonical id that fits int32.")
    canonical_map = jnp.asarray(map_V.astype(np.int32))
  vocab = canonical_map.shape[0]

  if not isinstance(raw_ids, jax.Array):
    raw = require_integer_array(raw_ids, "raw_ids")
    check_id_range(raw, vocab, "raw token id", f"the canonical map covers raw ids [0, {vocab}).")
    return canonical_map[jnp.asarray(raw.astype(np.int32))]

  _require_integer_dtype(raw_ids, "raw_ids")
  if not _is_traced(raw_ids):
    check_id_range(np.asarray(raw_ids), vocab, "raw token id",
                   f"the canonical map covers raw ids [0, {vocab}).")
  raw = raw_ids.astype(jnp.int32) if raw_ids.dtype.itemsize < 4 else raw_ids
  check_ids_jax(raw, vocab, "raw token ids")
  in_range = (raw >= 0) & (raw < vocab)
  safe_index = jnp.where(in_range, raw, 0).astype(jnp.int32)
  return jnp.where(in_range, canonical_map[safe_index], -1)


def lagged_ids_jax(ids_BT: jax.Array, pad_id: int, max_lag: int,
                   reset_id: int | None = None) -> list[jax.Array]:
  """Return the lagged ids [c_{t-k}] for k = 0..max_lag, each uint32 [B, T].

  Positions before the row start read `pad_id`.

  With `reset_id`, the token k steps back reads pad when a `reset_id` lies in (t - k, t].
  """
  length = ids_BT.shape[1]
  pad = np.uint32(pad_id)
  padded_BT = jnp.pad(ids_BT, ((0, 0), (max_lag, 0)), constant_values=pad)
  lagged = [padded_BT[:, max_lag - k:max_lag - k + length] for k in range(max_lag + 1)]
  if reset_id is None:
    return lagged

  positions_T = jnp.arange(length, dtype=jnp.int32)
  marks_BT = jnp.where(ids_BT == np.uint32(reset_id), positions_T, -1)
  last_reset_BT = jax.lax.cummax(marks_BT, axis=1)
  for k in range(1, max_lag + 1):
    crosses_BT = positions_T - k < last_reset_BT
    lagged[k] = jnp.where(crosses_BT, pad, lagged[k])
  return lagged


def _hash_layer(lagged: list[jax.Array], layout: HashLayout, layer: int, salt: int) -> jax.Array:
  """Return the global rows of one layer, int32 [B, T, G]."""
  num_orders, heads_per_order = layout.max_ngram - 1, layout.heads_per_ngram
  multipliers_N = [int(m) for m in layout.multipliers[layer]]
  mix = uint64.mul_u32_by_const(lagged[0], multipliers_N[0])
  mixes = []
  for k in range(1, layout.max_ngram):
    mix = uint64.xor(mix, uint64.mul_u32_by_const(lagged[k], multipliers_N[k]))  # order k + 1
    mixes.append(uint64.xor_const(mix, salt) if salt else mix)

  mix_hi_BTO1 = jnp.stack([hi for hi, _ in mixes], axis=-1)[..., None]
  mix_lo_BTO1 = jnp.stack([lo for _, lo in mixes], axis=-1)[..., None]
  primes_OK = layout.primes[layer].reshape(num_orders, heads_per_order).astype(np.uint32)
  offsets_OK = layout.offsets[layer].reshape(num_orders, heads_per_order).astype(np.int32)
  local_BTOK = uint64.mod_small((mix_hi_BTO1, mix_lo_BTO1), jnp.asarray(primes_OK))
  rows_BTOK = local_BTOK.astype(jnp.int32) + jnp.asarray(offsets_OK)
  batch, length = lagged[0].shape
  return rows_BTOK.reshape(batch, length, layout.heads)


def hash_rows_jax(canonical_ids_BT: Any, layout: HashLayout, *, salt: int = 0,
                  reset_id: int | None = None) -> jax.Array:
  """Hash canonical ids [B, T] into global table rows, int32 [L, B, T, G].

  Bit-exact with `hash_rows_np` and usable under `jax.jit` with x64 off.
  `layout`, `salt` and `reset_id` are Python values: close over them or mark
  them static. Raises on a non-integer dtype, a salt outside [0, 2^63) or
  concrete ids outside [0, layout.id_bound); see the module doc for traced ids.
  """
  check_jax_layout(layout)
  salt = validate_salt(salt)
  reset_id = validate_reset_id(reset_id, layout)
  ids_BT = prepare_ids_jax(canonical_ids_BT, layout)
  lagged = lagged_ids_jax(ids_BT, layout.pad_id, layout.max_ngram - 1, reset_id)
  rows = [_hash_layer(lagged, layout, layer, salt) for layer in range(layout.num_layers)]
  return jnp.stack(rows, axis=0)
