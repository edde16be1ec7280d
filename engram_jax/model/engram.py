"""Engram layer: hashed N-gram table rows, gated and added to the residual stream.

Implements the single-branch memory module of DeepSeek's Engram
(arXiv 2601.07372) as used by "User as Engram" (arXiv 2606.19172). Hash rows
are computed outside the model (engram_jax.hashing) and arrive as an input.

Shape letters: B batch, T sequence, D width, G hash heads, W row width,
E memory width (G * W), R table rows, K conv taps.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from engram_jax.model import lookup
from engram_jax.model.layers import normal_init, uniform_init
from engram_jax.model.norms import rms_norm


def causal_dilated_conv(u_BTD: jax.Array, w_KD: jax.Array, dilation: int) -> jax.Array:
  """Depthwise causal conv: out[t] = sum_j w[j] * u[t - (K-1-j) * dilation].

  The last tap w[K-1] reads the current step; positions before the row start
  read zero.
  """
  K = w_KD.shape[0]
  T = u_BTD.shape[1]
  reach = (K - 1) * dilation
  u_pad = jnp.pad(u_BTD, ((0, 0), (reach, 0), (0, 0)))
  w_KD = w_KD.astype(u_BTD.dtype)
  out_BTD = jnp.zeros_like(u_BTD)
  for j in range(K):
    start = j * dilation
    out_BTD = out_BTD + w_KD[j] * u_pad[:, start:start + T]
  return out_BTD


class EngramLayer(nnx.Module):
  """One Engram memory layer.

  Attributes:
    table: [R, W] fp32 rows; R is the hash layout's row count padded up to a
      multiple of the table shard count. Padding rows are zero and never
      addressed, and the real rows' initial values do not depend on padding.
    w_k, w_v: [E, D] key and value projections.
    conv: [K, D] depthwise conv taps, zero at init so the layer starts as the
      plain gated value.
  """

  def __init__(self, width: int, num_rows: int, hash_heads: int, row_width: int, *,
               kernel_size: int, dilation: int, compute_dtype, rngs: nnx.Rngs,
               table_shards: int = 1):
    self.hash_heads = hash_heads
    self.row_width = row_width
    self.dilation = dilation
    self.compute_dtype = compute_dtype
    memory_width = hash_heads * row_width
    bound = 1.0 / math.sqrt(memory_width)
    padded_rows = -(-num_rows // table_shards) * table_shards
    rows_RW = normal_init(1.0)(rngs.params(), (num_rows, row_width))
    self.table = nnx.Param(jnp.pad(rows_RW, ((0, padded_rows - num_rows), (0, 0))))
    self.w_k = nnx.Param(uniform_init(-bound, bound)(rngs.params(), (memory_width, width)))
    self.w_v = nnx.Param(uniform_init(-bound, bound)(rngs.params(), (memory_width, width)))
    self.conv = nnx.Param(jnp.zeros((kernel_size, width), jnp.float32))

  def __call__(self, h_BTD: jax.Array, rows_BTG: jax.Array, *, mesh=None,
               table_axis: str = "table", batch_axes=None, overrides=None) -> jax.Array:
    """Return y [B,T,D] to add to the stream h (the lambda-mixed block input)."""
    # 1-5. Gather 16 rows per position, project to k and v, gate: [B,T,G] -> [B,T,D].
    vg_BTD = lookup.lookup_and_gate(
        h_BTD, rows_BTG, self.table[...], self.w_k[...], self.w_v[...],
        compute_dtype=self.compute_dtype, mesh=mesh, table_axis=table_axis,
        batch_axes=batch_axes, overrides=overrides)

    # 6. Short causal conv over the normalised gated value, plus a skip path.
    conv_BTD = causal_dilated_conv(rms_norm(vg_BTD), self.conv[...], self.dilation)
    return (jax.nn.silu(conv_BTD) + vg_BTD).astype(self.compute_dtype)
