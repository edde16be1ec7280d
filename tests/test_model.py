"""Tests of the GPT backbone and the Engram layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from engram_jax.model import factory, lookup
from engram_jax.model.engram import EngramLayer, causal_dilated_conv
from engram_jax.model.gpt import GPT, cross_entropy_loss, has_value_embed
from engram_jax.model.layers import apply_rotary, rotary_tables


def _tiny_config(**model_overrides):
  cfg = tiny.get_config()
  cfg.model.sequence_len = 32
  for key, value in model_overrides.items():
    setattr(cfg.model, key, value)
  return cfg


def _random_rows(layout, batch: int, length: int, seed: int = 0) -> jnp.ndarray:
  """Random in-range global rows [L, B, T, G] for each Engram layer."""
  rng = np.random.default_rng(seed)
  slabs = []
  for rows in layout.table_rows:
    slabs.append(rng.integers(0, rows, size=(batch, length, layout.heads)))
  return jnp.asarray(np.stack(slabs), dtype=jnp.int32)


@pytest.fixture(scope="module")
def tiny_model():
  cfg = _tiny_config()
  layout = factory.hash_layout(cfg)
  return cfg, layout, factory.create_model(cfg, layout=layout, seed=0)


def test_forward_shapes_fp32(tiny_model):
  cfg, layout, model = tiny_model
  ids = jnp.ones((2, 16), jnp.int32)
  logits = model(ids, _random_rows(layout, 2, 16))
  assert logits.shape == (2, 16, cfg.model.vocab_size)
  assert logits.dtype == jnp.float32


def test_forward_bf16_compute_keeps_fp32_params_and_logits():
  cfg = _tiny_config(compute_dtype="bfloat16")
  layout = factory.hash_layout(cfg)
  model = factory.create_model(cfg, layout=layout, seed=0)
  logits = model(jnp.ones((1, 8), jnp.int32), _random_rows(layout, 1, 8))
  assert logits.dtype == jnp.float32
  assert model.blocks[1].engram.table[...].dtype == jnp.float32
  assert model.wte.embedding[...].dtype == jnp.float32


def test_logits_softcapped(tiny_model):
  _, layout, model = tiny_model
  logits = model(jnp.arange(16, dtype=jnp.int32)[None], _random_rows(layout, 1, 16))
  assert float(jnp.max(jnp.abs(logits))) <= model.softcap


def test_initial_loss_near_uniform(tiny_model):
  cfg, layout, model = tiny_model
  ids = jax.random.randint(jax.random.key(1), (2, 32), 0, cfg.model.vocab_size)
  loss = cross_entropy_loss(model(ids, _random_rows(layout, 2, 32)), jnp.roll(ids, -1, axis=1))
  assert abs(float(loss) - np.log(cfg.model.vocab_size)) < 0.05


def test_cross_entropy_ignores_minus_one():
  logits = jnp.zeros((1, 3, 4)).at[0, 0, 2].set(5.0)
  full = cross_entropy_loss(logits, jnp.array([[2, -1, -1]]))
  single = cross_entropy_loss(logits[:, :1], jnp.array([[2]]))
  assert float(full) == pytest.approx(float(single))


def test_causal(tiny_model):
  cfg, layout, model = tiny_model
  ids = jax.random.randint(jax.random.key(2), (1, 16), 0, cfg.model.vocab_size)
  rows = _random_rows(layout, 1, 16)
  changed_ids = ids.at[0, 10].set((ids[0, 10] + 1) % cfg.model.vocab_size)
  changed_rows = rows.at[:, 0, 10].set(0)
  before = model(ids, rows)
  after = model(changed_ids, changed_rows)
  np.testing.assert_array_equal(np.asarray(before[0, :10]), np.asarray(after[0, :10]))
  assert not np.allclose(np.asarray(before[0, 10]), np.asarray(after[0, 10]))


def test_rows_are_an_explicit_input(tiny_model):
  cfg, layout, model = tiny_model
  ids = jnp.ones((1, 8), jnp.int32)
  first = model(ids, _random_rows(layout, 1, 8, seed=1))
  second = model(ids, _random_rows(layout, 1, 8, seed=2))
  assert not np.allclose(np.asarray(first), np.asarray(second))


def test_suppress_makes_rows_irrelevant(tiny_model):
  _, layout, model = tiny_model
  ids = jnp.arange(8, dtype=jnp.int32)[None]
  first = model(ids, _random_rows(layout, 1, 8, seed=1), suppress_engram=True)
  second = model(ids, None, suppress_engram=True)
  np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_suppress_changes_output(tiny_model):
  _, layout, model = tiny_model
  ids = jnp.arange(8, dtype=jnp.int32)[None]
  rows = _random_rows(layout, 1, 8)
  assert not np.allclose(np.asarray(model(ids, rows)), np.asarray(model(ids, rows, suppress_engram=True)))


def test_engram_at_init_adds_gated_value():
  layer = EngramLayer(32, 50, 4, 8, kernel_size=4, dilation=3, compute_dtype=jnp.float32,
                      rngs=nnx.Rngs(0))
  h = jax.random.normal(jax.random.key(0), (2, 6, 32))
  rows = jax.random.randint(jax.random.key(1), (2, 6, 4), 0, 50)
  expected = lookup.lookup_and_gate(h, rows, layer.table[...], layer.w_k[...], layer.w_v[...],
                                    compute_dtype=jnp.float32)
  np.testing.assert_array_equal(np.asarray(layer(h, rows)), np.asarray(expected))


def test_conv_taps_read_dilated_past():
  u = jnp.zeros((1, 12, 1)).at[0, 2, 0].set(1.0)
  w = jnp.array([[1.0], [10.0], [100.0], [1000.0]])
  out = causal_dilated_conv(u, w, dilation=3)[0, :, 0]
  expected = np.zeros(12)
  expected[2], expected[5], expected[8], expected[11] = 1000.0, 100.0, 10.0, 1.0
  np.testing.assert_array_equal(np.asarray(out), expected)


def test_rotary_sign_convention():
  cos, sin = rotary_tables(4, 2, 100_000.0, jnp.float32)
  x = jnp.array([1.0, 0.0]).reshape(1, 1, 1, 2) * jnp.ones((1, 4, 1, 2))
  y = apply_rotary(x, cos, sin)
  # Position 1 with one frequency pair: (1, 0) -> (cos 1, -sin 1).
  np.testing.assert_allclose(np.asarray(y[0, 1, 0]), [np.cos(1.0), -np.sin(1.0)], rtol=1e-6)


def test_value_embeds_on_alternate_layers():
  assert [i for i in range(8) if has_value_embed(i, 8)] == [1, 3, 5, 7]
  assert [i for i in range(5) if has_value_embed(i, 5)] == [0, 2, 4]


def test_init_values(tiny_model):
  _, _, model = tiny_model
  np.testing.assert_allclose(np.asarray(model.resid_lambdas[...]), [1.15, 1.15 - 0.1 / 3, 1.15 - 0.2 / 3, 1.05], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(model.x0_lambdas[...]), [0.20, 0.15, 0.10, 0.05], rtol=1e-5)
  assert float(model.backout_lambda[...][0]) == pytest.approx(0.2)
  assert not np.any(np.asarray(model.blocks[0].attn.c_proj.kernel[...]))
  assert not np.any(np.asarray(model.blocks[0].mlp.c_proj.kernel[...]))
  assert not np.any(np.asarray(model.blocks[1].engram.conv[...]))
  assert float(jnp.std(model.wte.embedding[...])) == pytest.approx(0.8, rel=0.02)


def test_missing_rows_rejected(tiny_model):
  _, _, model = tiny_model
  with pytest.raises(ValueError, match="engram_rows"):
    model(jnp.ones((1, 8), jnp.int32))


def test_int64_rows_rejected(tiny_model):
  _, layout, model = tiny_model
  rows = np.asarray(_random_rows(layout, 1, 8)).astype(np.int64)
  with pytest.raises((TypeError, ValueError), match="int32"):
    model(jnp.ones((1, 8), jnp.int32), np.asarray(rows))


def test_wrong_row_shape_rejected(tiny_model):
  _, layout, model = tiny_model
  with pytest.raises(ValueError, match="shape"):
    model(jnp.ones((1, 8), jnp.int32), _random_rows(layout, 1, 7))


def test_too_long_sequence_rejected(tiny_model):
  cfg, layout, model = tiny_model
  length = cfg.model.sequence_len * cfg.model.rope_len_factor + 1
  with pytest.raises(ValueError, match="rotary"):
    model(jnp.ones((1, length), jnp.int32), None, suppress_engram=True)


def test_bad_layer_ids_rejected():
  cfg = _tiny_config()
  cfg.engram.layer_ids = (1, 9)
  with pytest.raises(ValueError, match="layer_ids"):
    factory.create_model(cfg)


def test_jit_matches_eager(tiny_model):
  _, layout, model = tiny_model
  ids = jnp.arange(8, dtype=jnp.int32)[None]
  rows = _random_rows(layout, 1, 8)
  jitted = nnx.jit(lambda m, i, r: m(i, r))(model, ids, rows)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(model(ids, rows)), atol=1e-5)


def test_base_model_has_no_engram():
  cfg = tiny.get_config("base")
  model = GPT(cfg, rngs=nnx.Rngs(0))
  assert all(block.engram is None for block in model.blocks)
