"""Backbone layers: rotary embedding, causal attention with value embeddings, MLP.

Shape letters: B batch, T sequence, D width, H heads, Dh head width,
V vocabulary.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from engram_jax.model.norms import rms_norm


def uniform_init(low: float, high: float):
  """Initializer drawing from U(low, high), for any shape and dtype."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, minval=low, maxval=high)

  return init


def normal_init(stddev: float):
  """Initializer drawing from N(0, stddev^2)."""

  def init(key, shape, dtype=jnp.float32):
    return stddev * jax.random.normal(key, shape, dtype)

  return init


def rotary_tables(num_positions: int, head_dim: int, base: float, dtype) -> tuple[jax.Array, jax.Array]:
  """Return cos and sin tables of shape [num_positions, Dh / 2] in `dtype`.

  Frequencies are computed in fp32 and cast afterwards, so bf16 tables hold the
  rounded fp32 values.
  """
  inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  positions = jnp.arange(num_positions, dtype=jnp.float32)
  freqs = jnp.outer(positions, inv_freq)
  return jnp.cos(freqs).astype(dtype), jnp.sin(freqs).astype(dtype)


def apply_rotary(x_BTHK: jax.Array, cos_TK: jax.Array, sin_TK: jax.Array) -> jax.Array:
  """Rotate the two halves of each head (half-split layout, not interleaved).

  The sign convention is y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos, which is
  the opposite rotation to the common formula; imported weights depend on it.
  """
  half = x_BTHK.shape[-1] // 2
  x1, x2 = x_BTHK[..., :half], x_BTHK[..., half:]
  cos = cos_TK[None, :, None, :]
  sin = sin_TK[None, :, None, :]
  y1 = x1 * cos + x2 * sin
  y2 = -x1 * sin + x2 * cos
  return jnp.concatenate([y1, y2], axis=-1).astype(x_BTHK.dtype)


class CausalSelfAttention(nnx.Module):
  """Multi-head causal attention with QK-norm and optional value embeddings.

  Attributes:
    c_q, c_k, c_v, c_proj: bias-free D -> D projections.
    ve_gate: Linear(ve_gate_channels -> H) on value-embedding layers, else None.
  """

  def __init__(self, width: int, num_heads: int, *, has_value_embed: bool,
               ve_gate_channels: int, qk_scale: float, compute_dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.head_dim = width // num_heads
    self.qk_scale = qk_scale
    s = math.sqrt(3.0) / math.sqrt(width)
    linear = lambda init: nnx.Linear(
        width, width, use_bias=False, kernel_init=init, dtype=compute_dtype, rngs=rngs)
    self.c_q = linear(uniform_init(-s, s))
    self.c_k = linear(uniform_init(-s, s))
    self.c_v = linear(uniform_init(-s, s))
    self.c_proj = linear(nnx.initializers.zeros)
    self.ve_gate = nnx.data(None)
    if has_value_embed:
      self.ve_gate = nnx.Linear(
          ve_gate_channels, num_heads, use_bias=False, kernel_init=uniform_init(0.0, 0.02),
          dtype=compute_dtype, rngs=rngs)

  def __call__(self, xn_BTD, ve_BTD, cos_TK, sin_TK) -> jax.Array:
    B, T, D = xn_BTD.shape
    H, Dh = self.num_heads, self.head_dim

    # 1. Projections: [B,T,D] -> [B,T,H,Dh].
    q_BTHK = self.c_q(xn_BTD).reshape(B, T, H, Dh)
    k_BTHK = self.c_k(xn_BTD).reshape(B, T, H, Dh)
    v_BTHK = self.c_v(xn_BTD).reshape(B, T, H, Dh)

    # 2. Value embedding mixed into v with a per-head gate in (0, 3).
    if self.ve_gate is not None:
      if ve_BTD is None:
        raise ValueError("This attention layer has a value embedding but received none.")
      channels = self.ve_gate.in_features
      gate_BTH = 3.0 * jax.nn.sigmoid(self.ve_gate(xn_BTD[..., :channels]))
      v_BTHK = v_BTHK + gate_BTH[..., None] * ve_BTD.reshape(B, T, H, Dh).astype(v_BTHK.dtype)

    # 3. Rotary, then QK-norm scaled by qk_scale.
    q_BTHK = rms_norm(apply_rotary(q_BTHK, cos_TK, sin_TK)) * jnp.asarray(self.qk_scale, q_BTHK.dtype)
    k_BTHK = rms_norm(apply_rotary(k_BTHK, cos_TK, sin_TK)) * jnp.asarray(self.qk_scale, k_BTHK.dtype)

    # 4. Exact causal softmax attention with scale 1/sqrt(Dh): [B,T,H,Dh].
    y_BTHK = jax.nn.dot_product_attention(q_BTHK, k_BTHK, v_BTHK, is_causal=True)
    return self.c_proj(y_BTHK.reshape(B, T, D))


class MLP(nnx.Module):
  """D -> 4D, relu(x)^2, 4D -> D, bias-free."""

  def __init__(self, width: int, *, compute_dtype, rngs: nnx.Rngs):
    s = math.sqrt(3.0) / math.sqrt(width)
    self.c_fc = nnx.Linear(
        width, 4 * width, use_bias=False, kernel_init=uniform_init(-0.4 * s, 0.4 * s),
        dtype=compute_dtype, rngs=rngs)
    self.c_proj = nnx.Linear(
        4 * width, width, use_bias=False, kernel_init=nnx.initializers.zeros,
        dtype=compute_dtype, rngs=rngs)

  def __call__(self, xn_BTD: jax.Array) -> jax.Array:
    return self.c_proj(jnp.square(jax.nn.relu(self.c_fc(xn_BTD))))
