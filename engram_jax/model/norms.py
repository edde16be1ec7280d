"""Parameter-free normalisation shared by the backbone and the Engram layers."""

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, eps: float | None = None) -> jax.Array:
  """RMS-normalise the last axis without a learnable scale.

  The mean of squares is accumulated in fp32 and the result is cast back to the
  input dtype. `eps` defaults to the machine epsilon of the input dtype, which
  is what `torch.nn.functional.rms_norm(x, shape)` uses when eps is None.
  """
  if eps is None:
    eps = float(jnp.finfo(x.dtype).eps)
  x32 = x.astype(jnp.float32)
  mean_sq = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  return (x32 * jax.lax.rsqrt(mean_sq + eps)).astype(x.dtype)
