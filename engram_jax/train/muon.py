"""Muon with NorMuon variance reduction and cautious weight decay, as an optax transform.

Each matrix takes this step (mu momentum, beta2 second-moment decay, lr the
base rate, wd the weight decay):

1. Nesterov momentum by interpolation: buf <- mu * buf + (1 - mu) * g, then
   u = (1 - mu) * g + mu * buf. There is no bias correction.
2. Polar Express orthogonalisation: u / (1.01 * ||u||_F + 1e-6), then up to
   five quintic iterations X <- a X + (b A + c A^2) X with A the Gram matrix
   of the smaller side. The per-iteration (a, b, c) are those of Amsel et al.,
   "The Polar Express" (arXiv 2505.16932), computed for 5 iterations with
   safety factor 2e-2 and cushion 2, as listed in karpathy/nanochat
   `nanochat/optim.py`. Runs in bf16 by default, like the reference.
3. NorMuon (arXiv 2510.05491): an EMA of the mean of u^2 over the shorter
   side, so one statistic per index of the longer side. When out >= in (ties
   included) the statistic is per output feature, otherwise per input
   feature, as in nanochat. u is divided by the square root of that EMA
   (floored at 1e-10), then rescaled to its Frobenius norm before the division.
4. Cautious weight decay: p <- p - lr' * u - lr' * wd * p * mask, where mask is
   1 where u * p >= 0 (same sign, or a zero), as in nanochat.
5. lr' = lr * sqrt(max(1, out / in)), so an MLP up-projection (in d, out 4d)
   moves twice as fast.

Shapes follow PyTorch's (rows, cols) = (out, in) in the description above,
but Flax kernels are stored [in, out]. In this module a kernel is `*_CR`
(C = in features = PyTorch cols, R = out features = PyTorch rows).
Orthogonalisation transposes the kernel to [R, C], so the tall/wide choice
(ties count as wide) matches the reference. The momentum buffer matches the
kernel shape. The second moment is [1, R] when R >= C, else [C, 1]. All state
is fp32.

Differences from `optax.contrib.muon` (optax 0.2.8), which is why this module
does not use it:
- optax bias-corrects the Nesterov momentum. Here it is the plain interpolation.
- optax normalises by ||u||_F + eps. Here the norm is scaled by 1.01 first.
- optax reads a coefficient table from its last rows (`ns_coeffs[-ns_steps:]`).
  Here fewer than five steps use the first rows, as nanochat does.
- optax has no NorMuon second moment and no cautious (sign-masked) decay.
- optax's `scale_by_shape` rescales for consistent RMS or width transfer,
  not by sqrt(max(1, out / in)).

Differences from the reference step: the reference keeps the orthogonalised
update in bf16 through NorMuon's final scale and the parameter update. Here
it is cast to fp32 right after orthogonalisation. The reference also stacks
same-shape matrices, but each matrix's maths is unchanged.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# Polar Express (a, b, c) per iteration, for 5 iterations.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# Pre-normalisation margin and guards, the reference's values.
_NORM_MARGIN = 1.01
_NORM_EPS = 1e-6
_SECOND_MOMENT_FLOOR = 1e-10
_NORM_FLOOR = 1e-10


class MuonState(NamedTuple):
  """Per-matrix Muon state, fp32.

  Attributes:
    momentum: the momentum buffer, shaped like each kernel [C, R].
    second_moment: the NorMuon EMA, [1, R] when R >= C, else [C, 1].
  """
  momentum: optax.Updates
  second_moment: optax.Updates


def polar_express(u_RC: jax.Array, ns_steps: int = 5, dtype=jnp.bfloat16) -> jax.Array:
  """Approximate the orthogonal polar factor of a [rows, cols] matrix.

  The singular values of the result lie roughly in [0.7, 1.2], not exactly at
  1: the coefficients trade exactness for fewer iterations.

  Args:
    u_RC: the matrix, in PyTorch (out, in) layout.
    ns_steps: iterations, 1 to 5. Fewer than 5 use the first coefficient rows.
    dtype: arithmetic dtype of the iterations (bf16 like the reference, or fp32).

  Returns:
    The orthogonalised matrix in `dtype`, same shape as `u_RC`.
  """
  if u_RC.ndim != 2:
    raise ValueError(f"polar_express needs a 2-D matrix, but got shape {u_RC.shape}.")
  _check_ns_steps(ns_steps)
  norm = jnp.linalg.norm(u_RC.astype(jnp.float32))
  x_RC = (u_RC.astype(jnp.float32) / (norm * _NORM_MARGIN + _NORM_EPS)).astype(dtype)
  tall = u_RC.shape[0] > u_RC.shape[1]
  for a, b, c in POLAR_EXPRESS_COEFFS[:ns_steps]:
    if tall:
      gram_CC = x_RC.T @ x_RC
      x_RC = a * x_RC + x_RC @ (b * gram_CC + c * (gram_CC @ gram_CC))
    else:
      gram_RR = x_RC @ x_RC.T
      x_RC = a * x_RC + (b * gram_RR + c * (gram_RR @ gram_RR)) @ x_RC
  return x_RC


def lr_shape_scale(kernel_shape: tuple[int, ...]) -> float:
  """Return sqrt(max(1, out / in)) for a Flax kernel of shape [in, out]."""
  _check_matrix_shape(kernel_shape)
  in_features, out_features = kernel_shape
  return math.sqrt(max(1.0, out_features / in_features))


def normuon_axis(kernel_shape: tuple[int, ...]) -> int:
  """Return the kernel axis NorMuon averages over: in (0) when out >= in, else out (1)."""
  _check_matrix_shape(kernel_shape)
  in_features, out_features = kernel_shape
  return 0 if out_features >= in_features else 1


def second_moment_shape(kernel_shape: tuple[int, ...]) -> tuple[int, int]:
  """Return the NorMuon statistic's shape for a kernel: the averaged axis becomes 1."""
  shape = list(kernel_shape)
  shape[normuon_axis(kernel_shape)] = 1
  return tuple(shape)


def normuon_rescale(u_CR: jax.Array, second_moment: jax.Array, beta2: float):
  """Apply NorMuon to an orthogonalised fp32 kernel update.

  Returns:
    (update, new_second_moment): the update divided by the square root of the
    new EMA and rescaled to its original Frobenius norm, and the EMA itself.
  """
  axis = normuon_axis(u_CR.shape)
  count = u_CR.shape[axis]
  sq_mean = jnp.mean(jnp.square(u_CR), axis=axis, keepdims=True)
  second_moment = second_moment + (1.0 - beta2) * (sq_mean - second_moment)
  inv_rms = jax.lax.rsqrt(jnp.maximum(second_moment, _SECOND_MOMENT_FLOOR))
  norm_before = jnp.sqrt(jnp.sum(sq_mean) * count)
  norm_after = jnp.sqrt(jnp.sum(sq_mean * count * jnp.square(inv_rms)))
  scale = inv_rms * (norm_before / jnp.maximum(norm_after, _NORM_FLOOR))
  return u_CR * scale, second_moment


def cautious_update(u_CR: jax.Array, param_CR: jax.Array, lr: float, weight_decay: float):
  """Return -lr * (u + wd * p * mask), mask = 1 where u * p >= 0.

  Decay applies only where the update already pushes the weight towards zero.
  """
  mask_CR = (u_CR * param_CR) >= 0
  decay_CR = weight_decay * param_CR * mask_CR.astype(param_CR.dtype)
  return -lr * (u_CR + decay_CR)


def muon(learning_rate: float, *, momentum: float = 0.95, beta2: float = 0.9,
         weight_decay: float = 0.0, ns_steps: int = 5,
         orthogonalize_dtype=jnp.bfloat16) -> optax.GradientTransformation:
  """Build the Muon transform for a tree of 2-D Flax kernels [in, out].

  The returned updates already include the learning rate and the decay, so
  `optax.apply_updates(params, updates)` completes the step. A schedule
  multiplier, if any, is applied after this transform: every term of the
  update is proportional to the lr, so scaling the update scales the lr.

  Args:
    learning_rate: base lr before the per-matrix shape scale.
    momentum: Nesterov momentum mu, constant.
    beta2: NorMuon second-moment decay.
    weight_decay: cautious weight decay coefficient.
    ns_steps: Polar Express iterations, 1 to 5.
    orthogonalize_dtype: dtype of the Polar Express iterations.
  """
  _check_ns_steps(ns_steps)
  for name, value in (("momentum", momentum), ("beta2", beta2)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f"Muon {name}={value} must be in [0, 1).")

  def init_fn(params):
    def zeros(p, shape_fn):
      _check_matrix_shape(p.shape)
      return jnp.zeros(shape_fn(p.shape), jnp.float32)
    return MuonState(
        momentum=jax.tree.map(lambda p: zeros(p, tuple), params),
        second_moment=jax.tree.map(lambda p: zeros(p, second_moment_shape), params))

  def update_fn(grads, state, params=None):
    if params is None:
      raise ValueError("Muon's cautious weight decay needs the parameters: call update(grads, state, params).")
    grad_leaves, treedef = jax.tree.flatten(grads)
    columns = zip(grad_leaves, treedef.flatten_up_to(state.momentum),
                  treedef.flatten_up_to(state.second_moment), treedef.flatten_up_to(params))
    results = [_matrix_step(g, m, v, p) for g, m, v, p in columns]
    unzip = lambda i: treedef.unflatten([r[i] for r in results])
    return unzip(0), MuonState(momentum=unzip(1), second_moment=unzip(2))

  def _matrix_step(grad_CR, momentum_CR, second_moment, param_CR):
    grad_CR = grad_CR.astype(jnp.float32)
    momentum_CR = momentum * momentum_CR + (1.0 - momentum) * grad_CR
    u_CR = (1.0 - momentum) * grad_CR + momentum * momentum_CR
    u_CR = polar_express(u_CR.T, ns_steps, orthogonalize_dtype).T.astype(jnp.float32)
    u_CR, second_moment = normuon_rescale(u_CR, second_moment, beta2)
    lr = learning_rate * lr_shape_scale(param_CR.shape)
    update_CR = cautious_update(u_CR, param_CR.astype(jnp.float32), lr, weight_decay)
    return update_CR.astype(param_CR.dtype), momentum_CR, second_moment

  return optax.GradientTransformation(init_fn, update_fn)


def _check_ns_steps(ns_steps: int) -> None:
  if not isinstance(ns_steps, int) or not 1 <= ns_steps <= len(POLAR_EXPRESS_COEFFS):
    raise ValueError(
        f"ns_steps={ns_steps!r} must be an integer from 1 to {len(POLAR_EXPRESS_COEFFS)}: "
        "the Polar Express coefficients exist for 5 iterations.")


def _check_matrix_shape(shape) -> None:
  if len(shape) != 2:
    raise ValueError(
        f"Muon only handles 2-D kernels [in, out], but got shape {tuple(shape)}. "
        "Send this parameter to an AdamW group instead.")
