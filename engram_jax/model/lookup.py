"""Engram table lookup and context gate.

An Engram layer reads one table row per hash head at every position and joins
the rows into a memory vector. It projects that vector to a key and a value,
then scales the value by a per-token gate computed from the key and the hidden
state:

  e = concat_g table[rows_g]                        [B, T, G] -> [B, T, E]
  k = e @ W_K, v = e @ W_V                          [B, T, E] -> [B, T, D]
  g = sum_c rms(h)_c * rms(k)_c / sqrt(D)           [B, T]
  alpha = sigmoid(sign(g) * sqrt(max(|g|, 1e-6)))   [B, T]
  vg = alpha * v                                    [B, T, D]

`lookup_and_gate` is the entry point for the layer. The table may be sharded by
rows over one mesh axis. The sharded gather then reads each row on the shard
that owns it and sums the per-shard results, so the table is never gathered
onto one device.

Shapes: B batch, T sequence, D model width, G hash heads, W row width,
E memory width G*W, R physical table rows.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from engram_jax.model.overrides import RowOverrides, apply_overrides
from engram_jax.model.norms import rms_norm

# Score magnitudes below this are raised to it before the square root, which
# keeps the derivative of the square root finite near a zero score.
SCORE_FLOOR = 1e-6


def _batch_axes_tuple(
    batch_axes: str | Sequence[str] | None) -> tuple[str, ...]:
  if batch_axes is None:
    return ()
  if isinstance(batch_axes, str):
    return (batch_axes,)
  return tuple(batch_axes)


def _table_shard_count(mesh: Mesh | None, table_axis: str,
                       batch_axes: tuple[str, ...]) -> int:
  """Validate the mesh axes and return the number of table shards (1: plain)."""
  if mesh is None:
    if batch_axes:
      raise ValueError(
          f"batch_axes={batch_axes} needs a mesh. Pass mesh= or drop "
          "batch_axes.")
    return 1
  names = tuple(mesh.axis_names)
  if table_axis not in names:
    raise ValueError(
        f"table_axis {table_axis!r} is not an axis of the mesh {names}. Pass "
        "the name of the axis that shards the table rows.")
  for axis in batch_axes:
    if axis not in names:
      raise ValueError(
          f"batch axis {axis!r} is not an axis of the mesh {names}.")
  if len(set(batch_axes)) != len(batch_axes):
    raise ValueError(f"batch_axes {batch_axes} repeats an axis.")
  return int(mesh.shape[table_axis])


def _check_table_and_rows(table_RW: jax.Array, rows_BTG: jax.Array,
                          n_shards: int) -> None:
  if table_RW.ndim != 2:
    raise ValueError(
        f"table must have rank 2 [rows, row_width], got shape "
        f"{table_RW.shape}.")
  if not jnp.issubdtype(table_RW.dtype, jnp.floating):
    raise TypeError(f"table must be floating point, got {table_RW.dtype}.")
  if rows_BTG.ndim != 3:
    raise ValueError(
        f"rows must have rank 3 [batch, seq, heads], got shape "
        f"{rows_BTG.shape}.")
  if rows_BTG.dtype != jnp.int32:
    raise TypeError(
        f"rows must be int32, got {rows_BTG.dtype}. Every table row id is "
        "below 2**31, so cast exact integer ids with .astype(np.int32). Float "
        "ids are rejected because they may have been rounded.")
  n_rows = table_RW.shape[0]
  if n_rows % n_shards:
    padded = -(-n_rows // n_shards) * n_shards
    raise ValueError(
        f"table has {n_rows} rows, which do not divide into {n_shards} "
        f"shards. Pad the table with unused rows to {padded} (a multiple of "
        f"{n_shards}). Row ids do not change.")
  concrete = not isinstance(rows_BTG, jax.core.Tracer) and (
      not isinstance(rows_BTG, jax.Array) or rows_BTG.is_fully_addressable)
  if concrete:
    # Ids visible on this host are checked here. Under jit, out-of-range ids
    # read NaN instead.
    rows_np = np.asarray(rows_BTG)
    if rows_np.size and (rows_np.min() < 0 or rows_np.max() >= n_rows):
      raise ValueError(
          f"row ids must lie in [0, {n_rows}), got min {rows_np.min()} and "
          f"max {rows_np.max()}. The ids do not address this table.")


def _gather_plain(table_RW: jax.Array, rows_BTG: jax.Array,
                  dtype: jnp.dtype) -> jax.Array:
  """Gather on one device. Out-of-range ids, negative ones too, read NaN."""
  n_rows, width = table_RW.shape
  batch, seq, heads = rows_BTG.shape
  valid_BTG = (rows_BTG >= 0) & (rows_BTG < n_rows)
  safe_BTG = jnp.where(valid_BTG, rows_BTG, 0)
  vals_BTGW = table_RW.at[safe_BTG].get(mode="promise_in_bounds")
  vals_BTGW = jnp.where(valid_BTG[..., None], vals_BTGW, jnp.nan)
  return vals_BTGW.astype(dtype).reshape(batch, seq, heads * width)


def _gather_sharded(table_RW: jax.Array, rows_BTG: jax.Array, *, mesh: Mesh,
                    table_axis: str, batch_axes: tuple[str, ...],
                    dtype: jnp.dtype) -> jax.Array:
  """Gather from a table sharded by rows over `table_axis`.

  Each shard reads the ids it owns and writes zeros elsewhere, and a sum over
  the table axis joins the shards. Every valid id has exactly one owner, so the
  sum is exact in any dtype and the cast to `dtype` happens before it. When
  the batch is also sharded over the table axis, the small int32 ids are
  all-gathered over that axis and the sum becomes a reduce-scatter.
  """
  n_rows, width = table_RW.shape
  n_shards = int(mesh.shape[table_axis])
  rows_per_shard = n_rows // n_shards
  batch_over_table = table_axis in batch_axes
  rows_spec = P(batch_axes or None, None, None)

  def gather_shard(table_local_RW, rows_out_BTG):
    # rows_out_BTG is this device's block of the output batch. rows_BTG is the
    # block this shard serves, which is larger when the batch is split over the
    # table axis.
    rows_BTG = rows_out_BTG
    if batch_over_table:
      rows_BTG = jax.lax.all_gather(rows_out_BTG, table_axis, axis=0,
                                    tiled=True)
    batch, seq, heads = rows_BTG.shape
    start = jax.lax.axis_index(table_axis) * rows_per_shard
    local_BTG = rows_BTG - start
    owned_BTG = (local_BTG >= 0) & (local_BTG < rows_per_shard)
    safe_BTG = jnp.where(owned_BTG, local_BTG, 0)
    vals_BTGW = table_local_RW.at[safe_BTG].get(mode="promise_in_bounds")
    vals_BTGW = jnp.where(owned_BTG[..., None], vals_BTGW, 0).astype(dtype)
    if batch_over_table:
      vals_BTGW = jax.lax.psum_scatter(vals_BTGW, table_axis,
                                       scatter_dimension=0, tiled=True)
    else:
      vals_BTGW = jax.lax.psum(vals_BTGW, table_axis)
    # No shard owns an out-of-range id, so its lanes would read zero. Mark
    # them NaN as the single-device path does.
    valid_BTG = (rows_out_BTG >= 0) & (rows_out_BTG < n_rows)
    vals_BTGW = jnp.where(valid_BTG[..., None], vals_BTGW, jnp.nan)
    return vals_BTGW.reshape(*rows_out_BTG.shape[:2], heads * width)

  table_spec = P(table_axis, None)
  if mesh.explicit_axes:
    # shard_map takes Explicit-axis inputs only in its in_specs layout. Moving
    # a replicated table there is a local slice, and the ids are small.
    # NOTE: a table sharded any other way is moved by a general reshard, which
    # may copy whole shards between devices. Shard it P(table_axis, None).
    table_RW = jax.reshard(table_RW, NamedSharding(mesh, table_spec))
    rows_BTG = jax.reshard(rows_BTG, NamedSharding(mesh, rows_spec))
  return jax.shard_map(
      gather_shard, mesh=mesh, in_specs=(table_spec, rows_spec),
      out_specs=rows_spec)(table_RW, rows_BTG)


def gather_rows(table_RW: jax.Array, rows_BTG: jax.Array, *,
                mesh: Mesh | None = None, table_axis: str = "table",
                batch_axes: str | Sequence[str] | None = None,
                dtype: jnp.dtype | None = None) -> jax.Array:
  """Read one table row per head and join the heads in head order.

  Args:
    table_RW: [R, W] float table. With a mesh it is sharded by rows over
      `table_axis`, and R must be a multiple of that axis size.
    rows_BTG: [B, T, G] int32 global row ids in [0, R).
    mesh: mesh for the row-sharded path. None, or a table axis of size 1,
      selects the single-device gather.
    table_axis: mesh axis that shards the table rows.
    batch_axes: mesh axes that shard the batch dimension of the ids and of the
      output. None replicates both. It may include `table_axis`.
    dtype: output dtype, by default the table dtype.

  Returns:
    [B, T, G*W] rows in `dtype`. Concrete out-of-range ids raise ValueError.
    Traced ones (under jit) read NaN.
  """
  batch_axes = _batch_axes_tuple(batch_axes)
  n_shards = _table_shard_count(mesh, table_axis, batch_axes)
  _check_table_and_rows(table_RW, rows_BTG, n_shards)
  dtype = table_RW.dtype if dtype is None else jnp.dtype(dtype)
  if n_shards == 1:
    return _gather_plain(table_RW, rows_BTG, dtype)
  batch_shards = math.prod(int(mesh.shape[a]) for a in batch_axes)
  if rows_BTG.shape[0] % batch_shards:
    raise ValueError(
        f"batch size {rows_BTG.shape[0]} does not divide over batch_axes "
        f"{batch_axes} ({batch_shards} shards). Use a multiple of "
        f"{batch_shards}.")
  return _gather_sharded(table_RW, rows_BTG, mesh=mesh, table_axis=table_axis,
                         batch_axes=batch_axes, dtype=dtype)


def _float_dtype(compute_dtype) -> jnp.dtype:
  compute_dtype = jnp.dtype(compute_dtype)
  if not jnp.issubdtype(compute_dtype, jnp.floating):
    raise TypeError(
        f"compute_dtype must be a float dtype such as float32 or bfloat16, got "
        f"{compute_dtype}.")
  return compute_dtype


def _check_gate_inputs(h_BTD: jax.Array, e_BTE: jax.Array, w_k_ED: jax.Array,
                       w_v_ED: jax.Array, compute_dtype) -> jnp.dtype:
  """Validate shapes and return the compute dtype as a numpy dtype."""
  compute_dtype = _float_dtype(compute_dtype)
  if h_BTD.ndim != 3 or e_BTE.ndim != 3:
    raise ValueError(
        f"h and the memory vectors must have rank 3 [batch, seq, width], got "
        f"shapes {h_BTD.shape} and {e_BTE.shape}.")
  if h_BTD.shape[:2] != e_BTE.shape[:2]:
    raise ValueError(
        f"h has [batch, seq] {h_BTD.shape[:2]} but the rows have "
        f"{e_BTE.shape[:2]}. Both must come from the same token batch.")
  width, mem_width = h_BTD.shape[2], e_BTE.shape[2]
  for name, w_ED in (("w_k", w_k_ED), ("w_v", w_v_ED)):
    if w_ED.shape != (mem_width, width):
      raise ValueError(
          f"{name} has shape {w_ED.shape}, expected [memory width, model "
          f"width] = ({mem_width}, {width}), where memory width is heads * "
          "row width of the table and model width is the last dim of h.")
  return compute_dtype


def engram_gate(h_BTD: jax.Array, e_BTE: jax.Array, w_k_ED: jax.Array,
                w_v_ED: jax.Array, *, compute_dtype,
                norm_eps: float | None = None) -> jax.Array:
  """Project memory vectors to key and value and gate the value by h.

  Args:
    h_BTD: [B, T, D] hidden state entering the block.
    e_BTE: [B, T, E] memory vectors (the joined table rows).
    w_k_ED, w_v_ED: [E, D] key and value projections, in (in, out) layout.
    compute_dtype: dtype of the projections and of the result (float32 or
      bfloat16). The gate score is reduced in float32 either way.
    norm_eps: epsilon of both RMSNorms. By default the machine epsilon of
      `compute_dtype`, which is what torch's rms_norm uses when eps is None.

  Returns:
    [B, T, D] gated value alpha * v in `compute_dtype`.
  """
  compute_dtype = _check_gate_inputs(h_BTD, e_BTE, w_k_ED, w_v_ED,
                                     compute_dtype)
  if norm_eps is None:
    norm_eps = float(jnp.finfo(compute_dtype).eps)
  width = h_BTD.shape[-1]

  # 1. Key and value: [B, T, E] @ [E, D] -> [B, T, D] in the compute dtype.
  e_BTE = e_BTE.astype(compute_dtype)
  k_BTD = jnp.einsum("bte,ed->btd", e_BTE, w_k_ED.astype(compute_dtype))
  v_BTD = jnp.einsum("bte,ed->btd", e_BTE, w_v_ED.astype(compute_dtype))

  # 2. Score per token, one value for all channels: [B, T, D] -> [B, T], fp32.
  h_norm_BTD = rms_norm(h_BTD.astype(jnp.float32), norm_eps)
  k_norm_BTD = rms_norm(k_BTD.astype(jnp.float32), norm_eps)
  score_BT = jnp.sum(h_norm_BTD * k_norm_BTD, axis=-1) / math.sqrt(width)

  # 3. Signed square root. sign(0) = 0 gives alpha = 0.5 at a zero score.
  score_BT = jnp.sign(score_BT) * jnp.sqrt(
      jnp.maximum(jnp.abs(score_BT), SCORE_FLOOR))
  alpha_BT = jax.nn.sigmoid(score_BT)

  # 4. Gate in fp32 and round once: [B, T, 1] * [B, T, D] -> [B, T, D].
  vg_BTD = alpha_BT[..., None] * v_BTD.astype(jnp.float32)
  return vg_BTD.astype(compute_dtype)


def lookup_and_gate(h_BTD: jax.Array, rows_BTG: jax.Array, table_RW: jax.Array,
                    w_k_ED: jax.Array, w_v_ED: jax.Array, *, compute_dtype,
                    mesh: Mesh | None = None, table_axis: str = "table",
                    batch_axes: str | Sequence[str] | None = None,
                    norm_eps: float | None = None,
                    overrides: RowOverrides | None = None) -> jax.Array:
  """Gather the table rows of every head, project them and apply the gate.

  The rows are cast to `compute_dtype` after the gather, so the table keeps
  its own (float32) dtype and its gradient accumulates in it. A fused kernel
  may replace this function without changing its arguments.

  Args:
    h_BTD: [B, T, D] hidden state entering the block.
    rows_BTG: [B, T, G] int32 global row ids, offset per head.
    table_RW: [R, W] table, sharded by rows over `table_axis` on `mesh`.
    w_k_ED, w_v_ED: [G*W, D] key and value projections.
    compute_dtype: dtype of the projections and the result.
    mesh, table_axis, batch_axes: sharding of the lookup, see `gather_rows`.
    norm_eps: epsilon of the gate's RMSNorms, see `engram_gate`.
    overrides: per-sequence rows whose gathered values are replaced, see
      engram_jax.model.overrides; the table itself is never written.

  Returns:
    [B, T, D] gated value in `compute_dtype`.
  """
  compute_dtype = _float_dtype(compute_dtype)
  e_BTE = gather_rows(table_RW, rows_BTG, mesh=mesh, table_axis=table_axis,
                      batch_axes=batch_axes, dtype=compute_dtype)
  if overrides is not None:
    e_BTE = apply_overrides(e_BTE, rows_BTG, overrides)
  return engram_gate(h_BTD, e_BTE, w_k_ED, w_v_ED,
                     compute_dtype=compute_dtype, norm_eps=norm_eps)
