"""N-gram hash in vectorised numpy int64, for the host input pipeline.

Glossary: L Engram layers, B batch, T sequence, N largest n-gram order,
O = N - 1 hashed orders, K hash heads per order, G = O * K hash heads.

The order-n n-gram at position t is (c_t, c_{t-1}, ..., c_{t-n+1}), and
positions before the row start read the pad id. Its mix is the XOR of
c_{t-k} * m_k over k = 0..n-1, then XOR salt when the salt is non-zero. Head h
of order n reads global row (mix mod p) + offset. Every product stays below
2^63 because ids are below `layout.id_bound`, which bounds the multipliers.

Reset at BOS (off by default): with `reset_id` set, an n-gram never reaches
back across a position holding `reset_id`. The token k steps back from t is
read as the pad id when a `reset_id` sits in (t - k, t]. So the n-grams of a
document that starts with BOS match those of a document at the row start.
"""

from typing import Any

import numpy as np

from engram_jax.hashing.layout import INT64_MAX, HashLayout


def validate_salt(salt: Any) -> int:
  """Check that `salt` is an integer in [0, 2^63) and return it as an int."""
  if isinstance(salt, (bool, np.bool_)) or not isinstance(salt, (int, np.integer)):
    raise TypeError(f"salt={salt!r} must be a Python or numpy integer.")
  if not 0 <= int(salt) <= INT64_MAX:
    raise ValueError(f"salt={salt} is outside [0, 2^63); use a non-negative 63-bit salt.")
  return int(salt)


def validate_reset_id(reset_id: Any, layout: HashLayout) -> int | None:
  """Check that `reset_id` is None or a canonical id and return it as an int or None."""
  if reset_id is None:
    return None
  if isinstance(reset_id, (bool, np.bool_)) or not isinstance(reset_id, (int, np.integer)):
    raise TypeError(f"reset_id={reset_id!r} must be an integer canonical id or None.")
  if not 0 <= int(reset_id) < layout.num_canonical:
    raise ValueError(
        f"reset_id={reset_id} is outside [0, {layout.num_canonical}); pass the canonical "
        "id of the BOS token.")
  return int(reset_id)


def require_integer_array(values: Any, name: str) -> np.ndarray:
  """Convert `values` to a numpy array and raise TypeError unless its dtype is integer."""
  array = np.asarray(values)
  if not np.issubdtype(array.dtype, np.integer):
    raise TypeError(
        f"{name} has dtype {array.dtype}; pass an integer array (floats and bools are rejected, "
        "so no id is silently rounded).")
  return array


def check_id_range(ids: np.ndarray, bound: int, name: str, hint: str) -> None:
  """Raise ValueError naming the first id outside [0, bound) and its position."""
  bad = (ids < 0) | (ids >= bound)
  if bad.any():
    position = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"{name} {ids[position]} at position {position} is outside [0, {bound}); {hint}")


def validate_ids_np(canonical_ids_BT: Any, layout: HashLayout) -> np.ndarray:
  """Check ids for hashing and return them as int64 [B, T].

  Valid ids are the canonical ids [0, V') and the pad id, i.e. [0, id_bound).
  Nothing is clamped: an id outside that range raises ValueError.
  """
  ids_BT = require_integer_array(canonical_ids_BT, "canonical_ids_BT")
  if ids_BT.ndim != 2:
    raise ValueError(
        f"canonical_ids_BT has shape {ids_BT.shape}; expected 2-D [B, T]. "
        "Pass one sequence as ids[None, :].")
  check_id_range(
      ids_BT, layout.id_bound, "canonical id",
      f"ids must be canonical ids below num_canonical={layout.num_canonical} or the pad id "
      f"{layout.pad_id}; map raw token ids with canonicalize_np first.")
  return ids_BT.astype(np.int64)


def canonicalize_np(raw_ids: Any, canonical_map: Any, *, num_canonical: int | None = None) -> np.ndarray:
  """Map raw token ids (any shape) to canonical ids (int64) through `canonical_map`.

  `canonical_map` is an integer array [V] with values in [0, num_canonical).
  Without `num_canonical`, only the range [0, 2^63) of the values is checked.
  A raw id outside [0, V) raises ValueError.
  """
  map_V = require_integer_array(canonical_map, "canonical_map")
  if map_V.ndim != 1:
    raise ValueError(f"canonical_map has shape {map_V.shape}; expected 1-D [V].")
  map_bound = INT64_MAX + 1 if num_canonical is None else num_canonical
  check_id_range(map_V, map_bound, "canonical_map value",
                 "the map must send every raw id to a canonical id.")
  raw = require_integer_array(raw_ids, "raw_ids")
  check_id_range(raw, map_V.shape[0], "raw token id",
                 f"the canonical map covers raw ids [0, {map_V.shape[0]}).")
  return map_V.astype(np.int64)[raw]


def lagged_ids_np(ids_BT: np.ndarray, pad_id: int, max_lag: int,
                  reset_id: int | None = None) -> list[np.ndarray]:
  """Return the lagged ids [c_{t-k}] for k = 0..max_lag, each int64 [B, T].

  Positions before the row start read `pad_id`.

  With `reset_id`, the token k steps back reads pad when a `reset_id` lies in (t - k, t].
  """
  batch, length = ids_BT.shape
  padded_BT = np.concatenate(
      [np.full((batch, max_lag), pad_id, dtype=np.int64), ids_BT], axis=1)
  lagged = [padded_BT[:, max_lag - k:max_lag - k + length] for k in range(max_lag + 1)]
  if reset_id is None:
    return lagged

  positions_T = np.arange(length, dtype=np.int64)
  marks_BT = np.where(ids_BT == reset_id, positions_T, -1)
  last_reset_BT = np.maximum.accumulate(marks_BT, axis=1)
  for k in range(1, max_lag + 1):
    crosses_BT = positions_T - k < last_reset_BT
    lagged[k] = np.where(crosses_BT, pad_id, lagged[k])
  return lagged


def hash_rows_np(canonical_ids_BT: Any, layout: HashLayout, *, salt: int = 0,
                 reset_id: int | None = None) -> np.ndarray:
  """Hash canonical ids [B, T] into global table rows, int32 [L, B, T, G].

  Layers stack in `layout.layer_ids` order. Heads follow the slab order
  order-2 heads 0..K-1, order-3 heads 0..K-1, and so on. Raises on ids outside
  [0, layout.id_bound), a non-integer dtype or a salt outside [0, 2^63).
  """
  ids_BT = validate_ids_np(canonical_ids_BT, layout)
  salt = validate_salt(salt)
  reset_id = validate_reset_id(reset_id, layout)
  num_orders, heads_per_order = layout.max_ngram - 1, layout.heads_per_ngram
  lagged = lagged_ids_np(ids_BT, layout.pad_id, num_orders, reset_id)

  batch, length = ids_BT.shape
  rows_LBTG = np.empty((layout.num_layers, batch, length, layout.heads), dtype=np.int32)
  for layer in range(layout.num_layers):
    multipliers_N = layout.multipliers[layer]
    mix_BT = lagged[0] * multipliers_N[0]
    mixes = []
    for k in range(1, layout.max_ngram):
      mix_BT = mix_BT ^ (lagged[k] * multipliers_N[k])  # order k + 1
      mixes.append(mix_BT ^ salt if salt else mix_BT)
    mix_BTO1 = np.stack(mixes, axis=-1)[..., None]
    primes_OK = layout.primes[layer].reshape(num_orders, heads_per_order)
    offsets_OK = layout.offsets[layer].reshape(num_orders, heads_per_order)
    rows_BTOK = mix_BTO1 % primes_OK + offsets_OK
    rows_LBTG[layer] = rows_BTOK.reshape(batch, length, layout.heads)
  return rows_LBTG
