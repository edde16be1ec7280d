"""Pretraining optimiser: AdamW for embeddings, tables and scalars, Muon for matrices.

Each parameter's group comes from `engram_jax.model.params.param_group`, an
explicit path rule. A "2-D goes to Muon" rule would wrongly send wte,
lm_head, the value embeddings and the Engram tables to Muon.

With a = (d / 768)^-0.5 for model width d (the AdamW rates were tuned at 768):

| group                | optimiser | base lr                           | betas         | weight decay |
|----------------------|-----------|-----------------------------------|---------------|--------------|
| lm_head              | AdamW     | unembedding_lr * a                | (0.8, 0.96)   | 0.01         |
| wte                  | AdamW     | embedding_lr * a                  | (0.8, 0.995)  | 0.001        |
| value_embeds         | AdamW     | 0.5 * embedding_lr * a            | (0.8, 0.995)  | 0.01         |
| resid_lambdas        | AdamW     | 0.01 * scalar_lr                  | (0.8, 0.95)   | 0.05         |
| x0_lambdas           | AdamW     | scalar_lr                         | (0.96, 0.95)  | 0            |
| smear                | AdamW     | smear_lr                          | (0.8, 0.95)   | 0            |
| engram_tables        | AdamW     | 5 * embedding_lr * a (see below)  | (0.8, 0.995)  | 0            |
| engram_conv          | AdamW     | matrix_lr * a                     | (0.9, 0.95)   | 0            |
| transformer_matrices | Muon      | matrix_lr * sqrt(max(1, out/in))  | mu 0.95, b2 0.9 | weight_decay |
| engram_projections   | Muon      | matrix_lr * sqrt(max(1, out/in))  | mu 0.95, b2 0.9 | weight_decay |

The table multiplier 5 is `optim.engram_table_lr_mult`. The AdamW betas and
decays are constants in the reference's group setup (nanochat's, plus the
Engram groups), so they are constants here too. The lrs, eps, and Muon's
momentum, beta2, decay and iteration count come from `cfg.optim`.

AdamW is `scale_by_adam` (bias-corrected, eps outside the square root), then
`add_decayed_weights`, then a step of -lr. That gives
p_new = p * (1 - lr * wd) - lr * adam_update: the decay uses the parameter
before the step, which is the reference's "decay first, then Adam step"
order. Every table row's moments decay every step (dense AdamW), so a row
seen once keeps moving for many steps. Moments are fp32.

A single multiplier `lr_schedule(step)` scales the whole update after the
groups are combined. Every term of every group's update is proportional to its
lr, so this equals scheduling each group's lr, and all groups see the same step
index (the number of updates applied so far).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from engram_jax import config as config_lib
from engram_jax.model import params as params_lib
from engram_jax.train import muon as muon_lib

ADAMW_GROUPS = ("wte", "lm_head", "value_embeds", "engram_tables", "engram_conv",
                "resid_lambdas", "x0_lambdas", "smear")
MUON_GROUPS = ("transformer_matrices", "engram_projections")

# AdamW rates were tuned at this width. Other widths scale by (d / 768)^-0.5.
_REFERENCE_WIDTH = 768


@dataclasses.dataclass(frozen=True)
class AdamWSettings:
  """Hyperparameters of one AdamW group."""
  lr: float
  b1: float
  b2: float
  weight_decay: float


def width_scale(cfg: ml_collections.ConfigDict) -> float:
  """Return a = (d / 768)^-0.5 for the model width d of `cfg`."""
  return (config_lib.model_width(cfg.model) / _REFERENCE_WIDTH) ** -0.5


def adamw_settings(cfg: ml_collections.ConfigDict) -> dict[str, AdamWSettings]:
  """Return the AdamW hyperparameters of every AdamW group."""
  o = cfg.optim
  a = width_scale(cfg)
  return {
      "lm_head": AdamWSettings(o.unembedding_lr * a, 0.8, 0.96, 0.01),
      "wte": AdamWSettings(o.embedding_lr * a, 0.8, 0.995, 0.001),
      "value_embeds": AdamWSettings(0.5 * o.embedding_lr * a, 0.8, 0.995, 0.01),
      "resid_lambdas": AdamWSettings(0.01 * o.scalar_lr, 0.8, 0.95, 0.05),
      "x0_lambdas": AdamWSettings(o.scalar_lr, 0.96, 0.95, 0.0),
      "smear": AdamWSettings(o.smear_lr, 0.8, 0.95, 0.0),
      "engram_tables": AdamWSettings(o.engram_table_lr_mult * o.embedding_lr * a, 0.8, 0.995, 0.0),
      "engram_conv": AdamWSettings(o.matrix_lr * a, 0.9, 0.95, 0.0),
  }


def group_learning_rates(cfg: ml_collections.ConfigDict) -> dict[str, float]:
  """Return each group's base lr, before the schedule and Muon's per-matrix shape scale."""
  rates = {group: s.lr for group, s in adamw_settings(cfg).items()}
  for group in MUON_GROUPS:
    rates[group] = cfg.optim.matrix_lr
  return rates


def param_labels(params: Any) -> Any:
  """Return a tree like `params` whose leaves are the optimiser group names.

  Args:
    params: nested dict of parameters (arrays or ShapeDtypeStructs), e.g.
      `nnx.to_pure_dict(nnx.state(model, nnx.Param))`. An `nnx.State` works
      too: the trailing `.value` of each Variable is not part of the path.
  """
  def label(path, _):
    return params_lib.param_group(params_lib.path_string(_path_parts(path)))
  return jax.tree_util.tree_map_with_path(label, params)


def _path_parts(path) -> list:
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(key.key)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(key.idx)
    elif isinstance(key, jax.tree_util.GetAttrKey) and key.name != "value":
      parts.append(key.name)
  return parts


def lr_schedule(num_iterations: int, optim_cfg: ml_collections.ConfigDict) -> Callable:
  """Return the lr multiplier m(step) shared by every group, as a jnp-traceable function.

  With N = num_iterations, W = warmup_steps, N_wd = round(warmdown_frac * N)
  (Python's round, half to even) and f = final_lr_frac:
  m = (step + 1) / W for step < W, 1 for step <= N - N_wd, else
  f + (1 - f) * (N - step) / N_wd, which reaches f at step N. Steps are
  counted from 0. The decay line continues below f past step N, so a trainer
  must stop at N.
  """
  _check_schedule_args(num_iterations, optim_cfg)
  warmup = int(optim_cfg.warmup_steps)
  warmdown = round(optim_cfg.warmdown_frac * num_iterations)
  final = float(optim_cfg.final_lr_frac)
  plateau_end = num_iterations - warmdown

  def multiplier(step):
    step = jnp.asarray(step, jnp.float32)
    warm = (step + 1.0) / max(warmup, 1)
    # max(warmdown, 1) only avoids 0/0: with warmdown 0 the decay branch is unused up to N.
    decay = final + (1.0 - final) * (num_iterations - step) / max(warmdown, 1)
    return jnp.where(step < warmup, warm, jnp.where(step <= plateau_end, 1.0, decay))
  return multiplier


def _check_schedule_args(num_iterations: int, o: ml_collections.ConfigDict) -> None:
  if not isinstance(num_iterations, int) or num_iterations < 1:
    raise ValueError(f"num_iterations={num_iterations!r} must be a positive integer.")
  if not isinstance(o.warmup_steps, int) or o.warmup_steps < 0:
    raise ValueError(f"optim.warmup_steps={o.warmup_steps!r} must be a non-negative integer.")
  if not 0.0 <= o.warmdown_frac <= 1.0:
    raise ValueError(f"optim.warmdown_frac={o.warmdown_frac} must be in [0, 1].")
  if not 0.0 <= o.final_lr_frac <= 1.0:
    raise ValueError(f"optim.final_lr_frac={o.final_lr_frac} must be in [0, 1].")


def adamw(settings: AdamWSettings, eps: float) -> optax.GradientTransformation:
  """Return AdamW with decay applied to the pre-step parameter, fp32 moments."""
  return optax.chain(
      optax.scale_by_adam(b1=settings.b1, b2=settings.b2, eps=eps, mu_dtype=jnp.float32),
      optax.add_decayed_weights(settings.weight_decay),
      optax.scale(-settings.lr),
  )


def build_optimizer(cfg: ml_collections.ConfigDict, params: Any, *,
                    orthogonalize_dtype=jnp.bfloat16) -> optax.GradientTransformation:
  """Build the full pretraining optimiser for `params` under `cfg`.

  Args:
    cfg: a full config. Reads `cfg.optim`, `cfg.model` (for the width) and
      `cfg.train.num_iterations` (for the schedule).
    params: the parameter tree (arrays or ShapeDtypeStructs), used to check
      that every leaf has a group, is fp32, and that Muon leaves are 2-D.
    orthogonalize_dtype: dtype of Muon's Polar Express iterations: bf16 as in
      the reference, or fp32 for exactness checks.

  Returns:
    A transform whose updates are added to the parameters with
    `optax.apply_updates`. Its `update` needs `params` for weight decay.
  """
  _check_params(params)
  o = cfg.optim
  transforms = {group: adamw(s, o.adam_eps) for group, s in adamw_settings(cfg).items()}
  for group in MUON_GROUPS:
    transforms[group] = muon_lib.muon(
        o.matrix_lr, momentum=o.muon_momentum, beta2=o.muon_beta2,
        weight_decay=o.weight_decay, ns_steps=o.muon_ns_steps,
        orthogonalize_dtype=orthogonalize_dtype)
  return optax.chain(
      optax.multi_transform(transforms, param_labels),
      optax.scale_by_schedule(lr_schedule(cfg.train.num_iterations, o)),
  )


def _check_params(params: Any) -> None:
  """Raise if a leaf has no group, is not fp32, or is a Muon leaf that is not 2-D."""
  labels = param_labels(params)
  for (path, leaf), group in zip(jax.tree_util.tree_leaves_with_path(params),
                                 jax.tree_util.tree_leaves(labels)):
    name = params_lib.path_string(_path_parts(path))
    if leaf.dtype != jnp.float32:
      raise TypeError(
          f"Parameter {name!r} has dtype {leaf.dtype}, but master weights and "
          "optimiser moments must be float32. Build the model with model.param_dtype='float32'.")
    if group in MUON_GROUPS and len(leaf.shape) != 2:
      raise ValueError(
          f"Parameter {name!r} is in Muon group {group!r} but has shape {leaf.shape}. "
          "Muon needs 2-D kernels [in, out]: fix its rule in PARAM_GROUP_RULES.")
