"""Per-sequence row overrides: a user's memory applied at lookup time.

Each sequence in a batch carries its own sorted list of table rows and the
values that replace them. The shared table is never written: a looked-up row
found in the sequence's list is replaced by the list's value, every other row
reads the table. Gradients reach the override values only, which is how the
memory writers train them with the model frozen.

Shape letters: B batch, T sequence, G hash heads, W row width, K override slots.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Fills unused slots of `rows_BK`; larger than any table row, so it sorts last
# and never matches a looked-up row.
UNUSED_ROW = jnp.iinfo(jnp.int32).max


class RowOverrides(NamedTuple):
  """Override rows of one Engram layer for each sequence of a batch.

  Attributes:
    rows_BK: int32 global row ids, ascending per sequence, unique, padded with
      UNUSED_ROW.
    values_BKW: float values that replace those rows.
  """
  rows_BK: jax.Array
  values_BKW: jax.Array


def check_overrides(overrides: RowOverrides, batch: int, row_width: int) -> None:
  """Raise ValueError when the override arrays do not fit the batch or the table."""
  rows, values = overrides.rows_BK, overrides.values_BKW
  if rows.ndim != 2 or rows.shape[0] != batch:
    raise ValueError(f"Override rows must have shape [batch={batch}, slots]; got {rows.shape}.")
  if rows.dtype != jnp.int32:
    raise TypeError(f"Override rows must be int32; got {rows.dtype}.")
  if values.shape != (*rows.shape, row_width):
    raise ValueError(
        f"Override values must have shape {(*rows.shape, row_width)} (batch, slots, row width); "
        f"got {values.shape}.")


def apply_overrides(e_BTE: jax.Array, rows_BTG: jax.Array, overrides: RowOverrides) -> jax.Array:
  """Replace gathered rows found in each sequence's override list by its values."""
  B, T, G = rows_BTG.shape
  K = overrides.rows_BK.shape[1]
  if K == 0:
    return e_BTE
  W = e_BTE.shape[-1] // G
  flat_BN = rows_BTG.reshape(B, T * G)
  slot_BN = jax.vmap(jnp.searchsorted)(overrides.rows_BK, flat_BN)
  slot_BN = jnp.minimum(slot_BN, K - 1)
  hit_BN = jnp.take_along_axis(overrides.rows_BK, slot_BN, axis=1) == flat_BN
  values_BNW = jnp.take_along_axis(overrides.values_BKW, slot_BN[..., None], axis=1)
  e_BNW = e_BTE.reshape(B, T * G, W)
  e_BNW = jnp.where(hit_BN[..., None], values_BNW.astype(e_BTE.dtype), e_BNW)
  return e_BNW.reshape(B, T, G * W)
