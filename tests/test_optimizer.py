"""Tests of the pretraining optimiser: groups, schedule, AdamW order, Muon and a real step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import d8, d20, tiny
from engram_jax import config as config_lib
from engram_jax import hashing
from engram_jax.model import factory
from engram_jax.model import params as params_lib
from engram_jax.model.gpt import cross_entropy_loss, has_value_embed
from engram_jax.train import muon
from engram_jax.train import optimizer as opt

ALL_GROUPS = set(opt.ADAMW_GROUPS) | set(opt.MUON_GROUPS)
NEVER_MUON = ("wte/embedding", "lm_head/kernel", "value_embed/embedding", "engram/table")


def _flat_labels(params) -> dict[str, str]:
  labels = opt.param_labels(params)
  flat = jax.tree_util.tree_leaves_with_path(labels)
  return {params_lib.path_string(k.key for k in path): label for path, label in flat}


def _abstract_params(cfg):
  return nnx.to_pure_dict(nnx.state(factory.abstract_model(cfg), nnx.Param))


@pytest.fixture(scope="module")
def tiny_setup():
  cfg = tiny.get_config()
  cfg.model.sequence_len = 32
  layout = factory.hash_layout(cfg)
  model = factory.create_model(cfg, layout=layout, seed=0)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return cfg, layout, model, params


# Groups ---------------------------------------------------------------------


def test_labels_cover_tiny_leaves(tiny_setup):
  _, _, _, params = tiny_setup
  labels = _flat_labels(params)
  assert len(labels) == len(jax.tree.leaves(params))
  assert set(labels.values()) == ALL_GROUPS


@pytest.mark.parametrize("config_module", [tiny, d8, d20])
def test_embeddings_and_tables_never_muon(config_module):
  cfg = config_module.get_config()
  labels = _flat_labels(_abstract_params(cfg))
  checked = [path for path in labels if path.endswith(NEVER_MUON)]
  value_embed_layers = sum(has_value_embed(i, cfg.model.depth) for i in range(cfg.model.depth))
  assert len(checked) == 2 + value_embed_layers + len(cfg.engram.layer_ids)
  for path in checked:
    assert labels[path] in opt.ADAMW_GROUPS, path


@pytest.mark.parametrize("config_module", [tiny, d8, d20])
def test_block_matrices_and_projections_muon(config_module):
  cfg = config_module.get_config()
  labels = _flat_labels(_abstract_params(cfg))
  muon_paths = {p for p, label in labels.items() if label in opt.MUON_GROUPS}
  depth = cfg.model.depth
  value_embed_layers = sum(has_value_embed(i, depth) for i in range(depth))
  expected = 6 * depth + value_embed_layers + 2 * len(cfg.engram.layer_ids)
  assert len(muon_paths) == expected
  for layer in cfg.engram.layer_ids:
    assert labels[f"blocks/{layer}/engram/w_k"] == "engram_projections"
    assert labels[f"blocks/{layer}/engram/w_v"] == "engram_projections"
  assert labels["blocks/0/mlp/c_fc/kernel"] == "transformer_matrices"
  assert labels[f"blocks/{depth - 1}/attn/ve_gate/kernel"] == "transformer_matrices"


def test_scalars_and_conv_groups(tiny_setup):
  labels = _flat_labels(tiny_setup[3])
  assert labels["resid_lambdas"] == "resid_lambdas"
  assert labels["x0_lambdas"] == "x0_lambdas"
  assert labels["smear_gate/kernel"] == "smear"
  assert labels["backout_lambda"] == "smear"
  assert labels["blocks/1/engram/conv"] == "engram_conv"


def test_unknown_path_rejected():
  with pytest.raises(ValueError, match="matches no rule"):
    opt.param_labels({"mystery": jnp.zeros((2, 2))})


def test_nnx_state_labels_match_pure_dict(tiny_setup):
  _, _, model, params = tiny_setup
  state_labels = jax.tree.leaves(opt.param_labels(nnx.state(model, nnx.Param)))
  assert state_labels == jax.tree.leaves(opt.param_labels(params))


# Schedule -------------------------------------------------------------------


def _schedule(num_iterations, warmup=20, warmdown_frac=0.5, final=0.05):
  o = config_lib.base_config().optim
  o.warmup_steps, o.warmdown_frac, o.final_lr_frac = warmup, warmdown_frac, final
  return opt.lr_schedule(num_iterations, o)


@pytest.mark.parametrize("step, expected", [
    (0, 1 / 20), (10, 11 / 20), (19, 1.0), (20, 1.0), (2000, 1.0),
    (2001, 0.05 + 0.95 * 1999 / 2000), (3000, 0.05 + 0.95 * 0.5), (4000, 0.05),
])
def test_schedule_n4000(step, expected):
  assert float(_schedule(4000)(step)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("step, expected", [
    (0, 1.0), (3, 1.0), (4, 0.05 + 0.95 / 2), (5, 0.05),
])
def test_schedule_n5_rounds_half_to_even(step, expected):
  # round(2.5) == 2 warmdown steps; half-up rounding would give 3 and m(3) < 1.
  assert float(_schedule(5, warmup=0)(step)) == pytest.approx(expected, rel=1e-6)


def test_schedule_n7_rounds_half_to_even():
  # round(3.5) == 4, so the decay starts after step 3.
  assert float(_schedule(7, warmup=0)(4)) == pytest.approx(0.05 + 0.95 * 3 / 4, rel=1e-6)


def test_schedule_warmup_wins_over_decay():
  assert float(_schedule(10, warmup=8)(7)) == pytest.approx(1.0)


def test_schedule_jits():
  schedule = _schedule(4000)
  steps = jnp.arange(0, 4001, 500, dtype=jnp.int32)
  np.testing.assert_allclose(jax.jit(jax.vmap(schedule))(steps), [schedule(int(s)) for s in steps], rtol=1e-6)


@pytest.mark.parametrize("field, value", [
    ("warmup_steps", -1), ("warmdown_frac", 1.5), ("final_lr_frac", -0.1)])
def test_schedule_bad_config_rejected(field, value):
  o = config_lib.base_config().optim
  setattr(o, field, value)
  with pytest.raises(ValueError, match=field):
    opt.lr_schedule(100, o)


def test_schedule_bad_iterations_rejected():
  with pytest.raises(ValueError, match="num_iterations"):
    opt.lr_schedule(0, config_lib.base_config().optim)


# Learning rates -------------------------------------------------------------

# (width, wte, value embeddings, lm_head, tables, conv), rounded as published.
LR_TABLE = [
    (512, "0.367", "0.184", "0.0098", "1.837", "0.0245"),
    (768, "0.300", "0.150", "0.0080", "1.500", "0.0200"),
    (1280, "0.232", "0.116", "0.0062", "1.162", "0.0155"),
    (1536, "0.212", "0.106", "0.0057", "1.061", "0.0141"),
]


@pytest.mark.parametrize("row", LR_TABLE, ids=lambda row: f"d{row[0]}")
def test_group_lrs_per_width(row):
  width, *expected = row
  cfg = config_lib.base_config()
  cfg.model.depth, cfg.model.aspect_ratio = 1, width
  assert config_lib.model_width(cfg.model) == width
  rates = opt.group_learning_rates(cfg)
  for group, text in zip(("wte", "value_embeds", "lm_head", "engram_tables", "engram_conv"), expected):
    decimals = len(text.split(".")[1])
    assert round(rates[group], decimals) == float(text), group


def test_width_independent_lrs():
  rates = opt.group_learning_rates(d20.get_config())
  assert rates["resid_lambdas"] == pytest.approx(0.005)
  assert rates["x0_lambdas"] == pytest.approx(0.5)
  assert rates["smear"] == pytest.approx(0.2)
  assert rates["transformer_matrices"] == pytest.approx(0.02)
  assert rates["engram_projections"] == pytest.approx(0.02)


# AdamW ----------------------------------------------------------------------


def test_adamw_decays_before_step():
  lr, wd, b1, b2, eps = 0.1, 0.5, 0.8, 0.95, 1e-10
  tx = opt.adamw(opt.AdamWSettings(lr, b1, b2, wd), eps)
  p, grads = 2.0, (0.5, 0.4)
  params = jnp.array([p], jnp.float32)
  state = tx.init(params)
  m = v = 0.0
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update(jnp.array([g], jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    adam = (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    decay_first = p * (1 - lr * wd) - lr * adam
    decay_last = (p - lr * adam) * (1 - lr * wd)
    p = decay_first
  assert float(params[0]) == pytest.approx(decay_first, abs=1e-6)
  assert abs(float(params[0]) - decay_last) > 1e-3


# Muon -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 256), (256, 64)], ids=["wide", "tall"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_polar_express_singular_values(shape, dtype):
  u = jax.random.normal(jax.random.key(0), shape)
  x = muon.polar_express(u, 5, dtype)
  assert x.dtype == dtype
  sv = np.linalg.svd(np.asarray(x, np.float32), compute_uv=False)
  assert sv.min() > 0.7
  assert sv.max() < 1.2


def test_polar_express_transpose_equivariant():
  u = jax.random.normal(jax.random.key(1), (48, 96))
  np.testing.assert_allclose(
      muon.polar_express(u.T, 5, jnp.float32), muon.polar_express(u, 5, jnp.float32).T, atol=1e-5)


def test_polar_express_bad_steps_rejected():
  with pytest.raises(ValueError, match="ns_steps"):
    muon.polar_express(jnp.ones((4, 8)), 6)


def test_lr_shape_scales():
  d = 256
  assert muon.lr_shape_scale((d, 4 * d)) == pytest.approx(2.0)  # c_fc, out 4d
  assert muon.lr_shape_scale((4 * d, d)) == pytest.approx(1.0)  # mlp c_proj
  assert muon.lr_shape_scale((512, 768)) == pytest.approx(math.sqrt(1.5))  # W_K at d768
  assert muon.lr_shape_scale((512, 1536)) == pytest.approx(math.sqrt(3.0))  # W_K at d1536


def test_normuon_statistic_on_longer_side():
  assert muon.second_moment_shape((64, 256)) == (1, 256)  # per output feature
  assert muon.second_moment_shape((256, 64)) == (256, 1)  # per input feature
  assert muon.second_moment_shape((64, 64)) == (1, 64)  # ties: per output feature


def test_normuon_keeps_frobenius_norm():
  u = jax.random.normal(jax.random.key(2), (32, 64)) * jnp.linspace(0.1, 3.0, 64)
  scaled, second = muon.normuon_rescale(u, jnp.zeros((1, 64)), beta2=0.9)
  assert float(jnp.linalg.norm(scaled)) == pytest.approx(float(jnp.linalg.norm(u)), rel=1e-5)
  np.testing.assert_allclose(second, 0.1 * jnp.mean(u**2, axis=0, keepdims=True), rtol=1e-6)


def test_normuon_equalises_columns():
  # Kernel [in 4, out 8]: out >= in, so each output column gets its own statistic.
  u = jnp.ones((4, 8)) * jnp.arange(1.0, 9.0)
  scaled, _ = muon.normuon_rescale(u, jnp.zeros((1, 8)), beta2=0.9)
  norms = jnp.linalg.norm(scaled, axis=0)
  np.testing.assert_allclose(norms, jnp.full(8, norms[0]), rtol=1e-5)


def test_cautious_decay_only_where_signs_agree():
  u = jnp.array([[1.0, -1.0], [1.0, -1.0]])
  p = jnp.array([[2.0, 2.0], [-2.0, -2.0]])
  lr, wd = 0.1, 0.5
  update = muon.cautious_update(u, p, lr, wd)
  expected = jnp.array([[-lr * (1.0 + wd * 2.0), lr], [-lr, lr * (1.0 + wd * 2.0)]])
  np.testing.assert_allclose(update, expected, rtol=1e-6)


def test_muon_momentum_interpolates():
  tx = muon.muon(0.02, momentum=0.9, orthogonalize_dtype=jnp.float32)
  params = {"w": jnp.ones((8, 16))}
  g1, g2 = jnp.full((8, 16), 1.0), jnp.full((8, 16), 3.0)
  update = jax.jit(tx.update)
  state = tx.init(params)
  _, state = update({"w": g1}, state, params)
  _, state = update({"w": g2}, state, params)
  np.testing.assert_allclose(state.momentum["w"], 0.9 * 0.1 * g1 + 0.1 * g2, rtol=1e-6)


def test_muon_step_size_scales_with_shape():
  # Orthogonalisation and NorMuon give g and g.T updates of equal Frobenius norm, and
  # zero params get no decay, so the norms differ only by the lr shape scale (2 vs 1).
  tx = muon.muon(0.02, orthogonalize_dtype=jnp.float32)
  g = jax.random.normal(jax.random.key(3), (32, 128))
  params = {"up": jnp.zeros((32, 128)), "down": jnp.zeros((128, 32))}
  updates, _ = jax.jit(tx.update)({"up": g, "down": g.T}, tx.init(params), params)
  ratio = jnp.linalg.norm(updates["up"]) / jnp.linalg.norm(updates["down"])
  assert float(ratio) == pytest.approx(2.0, rel=1e-3)


def test_muon_needs_params():
  tx = muon.muon(0.02)
  params = {"w": jnp.ones((4, 8))}
  with pytest.raises(ValueError, match="parameters"):
    tx.update(params, tx.init(params))


def test_muon_rejects_non_matrix():
  with pytest.raises(ValueError, match="2-D"):
    muon.muon(0.02).init({"w": jnp.ones((4, 8, 2))})


# Full optimiser -------------------------------------------------------------


def test_build_rejects_bf16_params(tiny_setup):
  cfg, _, _, params = tiny_setup
  bad = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  with pytest.raises(TypeError, match="float32"):
    opt.build_optimizer(cfg, bad)


def test_d20_state_fp32_abstract():
  cfg = d20.get_config()
  params = _abstract_params(cfg)
  state = jax.eval_shape(opt.build_optimizer(cfg, params).init, params)
  for leaf in jax.tree.leaves(state):
    assert leaf.dtype == jnp.float32 or (leaf.dtype == jnp.int32 and leaf.shape == ())


def _small_params() -> dict:
  """A few small leaves with real parameter paths, one or more per group."""
  shapes = {
      "wte": {"embedding": (64, 16)},
      "lm_head": {"kernel": (16, 64)},
      "blocks": {0: {
          "attn": {"c_q": {"kernel": (16, 16)}},
          "mlp": {"c_fc": {"kernel": (16, 64)}, "c_proj": {"kernel": (64, 16)}},
          "value_embed": {"embedding": (64, 16)},
          "engram": {"table": (50, 4), "w_k": (32, 16), "w_v": (32, 16), "conv": (4, 16)},
      }},
      "resid_lambdas": (2,), "x0_lambdas": (2,), "smear_gate": {"kernel": (24, 1)},
      "smear_lambda": (1,), "backout_lambda": (1,),
  }
  rng = np.random.default_rng(4)
  return jax.tree.map(lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


@pytest.fixture(scope="module")
def small_updates():
  """First updates on `_small_params`, with the default warmup and with none."""
  cfg = tiny.get_config()
  params = _small_params()
  grads = jax.tree.map(lambda p: jnp.sin(3.0 * p + 1.0), params)
  cfg_flat = cfg.copy_and_resolve_references()
  cfg_flat.optim.warmup_steps = 0
  updates = {}
  for name, c in (("warm", cfg), ("flat", cfg_flat)):
    tx = opt.build_optimizer(c, params, orthogonalize_dtype=jnp.float32)
    updates[name], _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return cfg, params, updates


def test_small_params_cover_groups():
  assert set(_flat_labels(_small_params()).values()) == ALL_GROUPS


def test_schedule_scales_every_group(small_updates):
  # Warmup step 0 has multiplier 1/20: every group's update is 1/20 of the flat-schedule one.
  cfg, _, updates = small_updates
  scale = 1.0 / cfg.optim.warmup_steps
  for warm, flat in zip(jax.tree.leaves(updates["warm"]), jax.tree.leaves(updates["flat"])):
    np.testing.assert_allclose(warm, scale * flat, rtol=1e-5, atol=1e-9)


def test_update_moves_every_leaf(small_updates):
  _, _, updates = small_updates
  for path, update in jax.tree_util.tree_leaves_with_path(updates["flat"]):
    assert float(jnp.max(jnp.abs(update))) > 0.0, path


@pytest.fixture(scope="module")
def trained(tiny_setup):
  """Run 4 jitted optimiser steps on one fixed batch; return losses and the final state."""
  cfg, layout, model, params = tiny_setup
  cfg = cfg.copy_and_resolve_references()
  cfg.optim.warmup_steps = 0
  cfg.train.num_iterations = 100
  graphdef = nnx.graphdef(model)
  ids_BT = jnp.asarray(np.random.default_rng(0).integers(0, cfg.model.vocab_size, (4, 33)), jnp.int32)
  inputs_BT, targets_BT = ids_BT[:, :-1], ids_BT[:, 1:]
  rows_LBTG = hashing.hash_rows_jax(inputs_BT, layout)
  tx = opt.build_optimizer(cfg, params)

  def loss_fn(p):
    logits = nnx.merge(graphdef, p)(inputs_BT, rows_LBTG)
    return cross_entropy_loss(logits, targets_BT)

  @jax.jit
  def step(p, state):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  state, losses = jax.jit(tx.init)(params), []
  for _ in range(4):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return losses, state


def test_steps_lower_loss(trained):
  losses, _ = trained
  assert losses[-1] < losses[0] - 0.5


def test_state_leaves_fp32(trained):
  _, state = trained
  for leaf in jax.tree.leaves(state):
    assert leaf.dtype == jnp.float32 or (leaf.dtype == jnp.int32 and leaf.shape == ())
