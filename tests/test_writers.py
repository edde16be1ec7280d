"""Memory writers: row location, RANDOM, UNEMBED_P, OPT and Joint OPT on a tiny random model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from engram_jax import hashing
from engram_jax.memory import facts, forward, joint_loop, joint_opt, maps, writers
from engram_jax.memory.composition import stack_overrides
from engram_jax.model import factory
from engram_jax.tokenizer import build_canonical_map, train_bpe
from engram_jax.users import fact_prompts, generate_users, persona_documents

VOCAB = 1024
# One settings object for every single-user run, so they share a compiled program.
# The anchor term trades recall for locality (tested in test_keep), so it is off
# where these tests need full recall.
SETTINGS = joint_opt.JointOptSettings(max_steps=200, patience=3, anchor_weight=0.0)


def _tiny_config(layer_ids=(1, 2)):
  cfg = tiny.get_config()
  cfg.model.sequence_len = 64
  cfg.model.vocab_size = VOCAB
  cfg.engram.layer_ids = layer_ids
  return cfg


@pytest.fixture(scope="module")
def env():
  tokenizer = train_bpe(list(persona_documents(300, 0)), VOCAB)
  canonical_map = build_canonical_map(tokenizer)
  cfg = _tiny_config()
  layout = hashing.layout_from_config(cfg.engram, canonical_map.num_canonical)
  model = factory.create_model(cfg, layout=layout, seed=0)
  users = generate_users(2, 0)
  return dict(tokenizer=tokenizer, canonical_map=canonical_map, layout=layout, model=model,
              users=users, layer=cfg.engram.layer_ids[-1],
              fingerprint=maps.model_fingerprint(cfg, tokenizer.fingerprint, layout))


def _distinct_trigger_examples(env, user: int, count: int):
  """The first `count` facts of a user whose trigger rows differ from every other chosen fact."""
  chosen, seen = [], set()
  for example in facts.encode_facts(fact_prompts(env["users"][user]), env["tokenizer"]):
    trigger = facts.locate_rows(example, env["layout"], env["canonical_map"], env["layer"])[0]
    if seen.isdisjoint(trigger.tolist()):
      chosen.append(example)
      seen.update(trigger.tolist())
    if len(chosen) == count:
      return chosen
  raise AssertionError(f"user {user} has fewer than {count} facts with distinct trigger rows")


def _write_kwargs(env):
  return dict(layout=env["layout"], canonical_map=env["canonical_map"],
              model_fingerprint=env["fingerprint"])


def _greedy_correct(env, examples, override_map) -> np.ndarray:
  """Full forward pass with the map served as overrides: is every answer token the argmax?"""
  batch = forward.build_fact_batch(examples, env["layout"], env["canonical_map"])
  overrides = stack_overrides([override_map] * len(examples))
  logits = forward.full_answer_logits(env["model"], batch, overrides, env["layer"])
  return np.asarray(forward.answer_correct(
      logits, jnp.asarray(batch.answer_ids_NA), jnp.asarray(batch.answer_mask_NA)))


def _born_in_pair(env):
  """Two facts whose prompts end in the same three tokens, so their trigger rows coincide."""
  tokenizer, owner = env["tokenizer"], env["users"][0].uid
  return [facts.FactExample(owner, key, tuple(tokenizer.encode(prompt, prepend_bos=True)),
                            tuple(tokenizer.encode(answer)))
          for key, prompt, answer in (("pair_a", "Willa was born in", " 1984"),
                                      ("pair_b", "Emil was born in", " 1994"))]


@pytest.fixture(scope="module")
def joint(env):
  """One Joint OPT run on six facts, with the model parameters from before it.

  The facts avoid the rows of `_born_in_pair`, so the overlap test can add the
  pair and reuse the compiled program.
  """
  pair_rows = _trigger(env, _born_in_pair(env)[0])
  examples = [e for e in _distinct_trigger_examples(env, 0, 8)
              if np.intersect1d(_trigger(env, e), pair_rows).size == 0][:6]
  before = jax.tree.map(np.array, nnx.state(env["model"]))
  result, stats = joint_opt.write_joint_opt(
      env["model"], examples, settings=SETTINGS, **_write_kwargs(env))
  return dict(examples=examples, before=before, map=result, stats=stats)


@pytest.fixture(scope="module")
def opt_result(env):
  examples = _distinct_trigger_examples(env, 0, 3)
  return examples, writers.write_opt(env["model"], examples, **_write_kwargs(env))


def _trigger(env, example) -> np.ndarray:
  return facts.locate_rows(example, env["layout"], env["canonical_map"], env["layer"])[0]


def _located_union(env, examples, continuation_heads=None) -> np.ndarray:
  located = [facts.locate_rows(e, env["layout"], env["canonical_map"], env["layer"],
                               continuation_heads=continuation_heads) for e in examples]
  rows = np.concatenate([r.reshape(-1) for r in located])
  return np.unique(rows[rows != facts.NO_ROW])


# Row location.

def test_trigger_rows_match_hash(env):
  example = _distinct_trigger_examples(env, 0, 1)[0]
  canonical = env["canonical_map"].canonicalize(np.asarray(example.sequence_ids)[None])
  rows_LBTG = hashing.hash_rows_np(canonical, env["layout"])
  located = facts.locate_rows(example, env["layout"], env["canonical_map"], env["layer"])
  expected = rows_LBTG[-1, 0, example.trigger_position]
  np.testing.assert_array_equal(located[0], expected)


def test_continuation_rows_match_hash(env):
  example = next(e for e in _distinct_trigger_examples(env, 0, 6) if len(e.answer_ids) > 2)
  canonical = env["canonical_map"].canonicalize(np.asarray(example.sequence_ids)[None])
  rows_TG = hashing.hash_rows_np(canonical, env["layout"])[-1, 0]
  located = facts.locate_rows(example, env["layout"], env["canonical_map"], env["layer"])
  last_answer_input = len(example.sequence_ids) - 2
  np.testing.assert_array_equal(located, rows_TG[example.trigger_position:last_answer_input + 1])


def test_continuation_head_subset(env):
  example = next(e for e in _distinct_trigger_examples(env, 0, 6) if len(e.answer_ids) > 1)
  order3 = facts.order_heads(env["layout"], 3)
  located = facts.locate_rows(example, env["layout"], env["canonical_map"], env["layer"],
                              continuation_heads=order3)
  assert np.all(located[1:, :8] == facts.NO_ROW)
  assert np.all(located[1:, 8:] != facts.NO_ROW)
  assert np.all(located[0] != facts.NO_ROW)


def test_bad_continuation_heads_rejected(env):
  example = _distinct_trigger_examples(env, 0, 1)[0]
  with pytest.raises(ValueError, match="continuation_heads"):
    facts.locate_rows(example, env["layout"], env["canonical_map"], env["layer"],
                      continuation_heads=(3, 16))


def test_unknown_layer_rejected(env):
  example = _distinct_trigger_examples(env, 0, 1)[0]
  with pytest.raises(ValueError, match="no Engram table"):
    facts.locate_rows(example, env["layout"], env["canonical_map"], 3)


# RANDOM and UNEMBED_P.

def test_unembed_p_solves_least_squares(env):
  engram = env["model"].blocks[env["layer"]].engram
  w_v = np.asarray(engram.w_v[...], np.float64)
  u = np.asarray(env["model"].lm_head.kernel[...], np.float64)[:, 77]
  e = writers.unembed_vectors(engram.w_v[...], env["model"].lm_head.kernel[...], [77], scale=20.0)[0]
  # Normal equations of min |e @ w_v - 20 u|: the residual is orthogonal to the rows of w_v.
  residual = e.astype(np.float64) @ w_v - 20.0 * u
  assert np.abs(w_v @ residual).max() < 1e-4 * np.abs(20.0 * w_v @ u).max()


def test_unembed_p_exact_when_memory_wider(env):
  rng = np.random.default_rng(0)
  w_v_ED = rng.uniform(-0.1, 0.1, size=(64, 32)).astype(np.float32)
  lm_head_DV = rng.normal(size=(32, 10)).astype(np.float32)
  e_kE = writers.unembed_vectors(w_v_ED, lm_head_DV, [3, 7], scale=20.0)
  np.testing.assert_allclose(e_kE @ w_v_ED, 20.0 * lm_head_DV[:, [3, 7]].T, rtol=1e-3, atol=1e-3)


def test_unembed_p_head_slices(env):
  example = _distinct_trigger_examples(env, 0, 1)[0]
  written = writers.write_unembed_p(env["model"], [example], **_write_kwargs(env))
  slices = writers.unembed_p_slices(env["model"], env["layer"], [example.answer_ids[0]], scale=20.0)[0]
  trigger = facts.locate_rows(example, env["layout"], env["canonical_map"], env["layer"])[0]
  head = 5
  np.testing.assert_allclose(
      written.values[np.searchsorted(written.rows, trigger[head])], slices[head], rtol=1e-5)


def test_random_is_deterministic(env):
  examples = _distinct_trigger_examples(env, 0, 3)
  first = writers.write_random(env["model"], examples, **_write_kwargs(env))
  second = writers.write_random(env["model"], examples, **_write_kwargs(env))
  assert first == second


def test_random_seeded_by_token(env):
  values = writers.random_slices([5], 16, 8, scale=20.0)[0]
  expected = np.random.default_rng(47).standard_normal((16, 8)) * 20.0
  np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_duplicate_rows_merged_by_mean(env):
  example = _distinct_trigger_examples(env, 0, 1)[0]
  twin = dataclasses.replace(example, key="twin", answer_ids=(example.answer_ids[0] + 1,))
  merged = writers.write_unembed_p(env["model"], [example, twin], **_write_kwargs(env))
  tokens = [example.answer_ids[0], twin.answer_ids[0]]
  slices = writers.unembed_p_slices(env["model"], env["layer"], tokens, scale=20.0)
  trigger = facts.locate_rows(example, env["layout"], env["canonical_map"], env["layer"])[0]
  np.testing.assert_allclose(merged.values[np.searchsorted(merged.rows, trigger[0])],
                             slices[:, 0].mean(axis=0), rtol=1e-5, atol=1e-7)


def test_opt_recalls_its_facts(env, opt_result):
  examples, written = opt_result
  assert _greedy_correct(env, examples, written).all()


def test_opt_writes_located_rows(env, opt_result):
  examples, written = opt_result
  np.testing.assert_array_equal(written.rows, _located_union(env, examples))


# Joint OPT.

def test_cached_prefix_equals_full_forward(env, joint):
  batch = forward.build_fact_batch(joint["examples"], env["layout"], env["canonical_map"])
  overrides = stack_overrides([joint["map"]] * len(joint["examples"]))
  cache = forward.compute_prefix(env["model"], batch, env["layer"])
  cached = forward.cached_answer_logits(env["model"], cache, overrides, env["layer"])
  full = forward.full_answer_logits(env["model"], batch, overrides, env["layer"])
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5)


def test_selected_logits_match_dense(env, joint):
  batch = forward.build_fact_batch(joint["examples"], env["layout"], env["canonical_map"])
  cache = forward.compute_prefix(env["model"], batch, env["layer"])
  select = jnp.asarray(batch.answer_mask_NA)
  budget = int(batch.answer_mask_NA.sum())
  graphdef, state = nnx.split(env["model"])

  @jax.jit
  def both(state):
    model = nnx.merge(graphdef, state)
    dense = forward.answer_logits(model, cache, None, env["layer"])
    return dense, forward.selected_answer_logits(
        model, cache, None, env["layer"], select, budget)

  dense, selected = both(state)
  expected = np.asarray(dense)[np.asarray(selected.example_K), np.asarray(selected.slot_K)]
  np.testing.assert_allclose(np.asarray(selected.logits_KV), expected, atol=1e-5)


def test_cached_prefix_with_backout_below_target(env):
  # Backout keeps block 2's output; with the target at block 3 the cache must carry it.
  cfg = _tiny_config(layer_ids=(1, 3))
  layout = hashing.layout_from_config(cfg.engram, env["canonical_map"].num_canonical)
  model = factory.create_model(cfg, layout=layout, seed=1)
  examples = _distinct_trigger_examples(env, 0, 2)
  batch = forward.build_fact_batch(examples, layout, env["canonical_map"])
  cache = forward.compute_prefix(model, batch, 3)
  assert cache.kept_NTD is not None
  np.testing.assert_allclose(np.asarray(forward.cached_answer_logits(model, cache, None, 3)),
                             np.asarray(forward.full_answer_logits(model, batch, None, 3)), atol=1e-5)


def test_joint_opt_model_unchanged(env, joint):
  after = jax.tree.map(np.array, nnx.state(env["model"]))
  equal = jax.tree.map(np.array_equal, joint["before"], after)
  assert all(jax.tree.leaves(equal))


def test_joint_opt_map_holds_managed_rows(env, joint):
  np.testing.assert_array_equal(joint["map"].rows, _located_union(env, joint["examples"]))


def test_joint_opt_reaches_full_recall(joint):
  assert joint["stats"].recall == 1.0


def test_joint_opt_stops_early(joint):
  assert joint["stats"].steps < SETTINGS.max_steps


def test_joint_opt_every_answer_token_argmax(env, joint):
  assert any(len(e.answer_ids) > 1 for e in joint["examples"])
  assert _greedy_correct(env, joint["examples"], joint["map"]).all()


def test_joint_opt_overlapping_triggers(env, joint):
  pair = _born_in_pair(env)
  np.testing.assert_array_equal(_trigger(env, pair[0]), _trigger(env, pair[1]))  # precondition
  examples = pair + joint["examples"]
  table = np.array(env["model"].blocks[env["layer"]].engram.table[...])
  result, _ = joint_opt.write_joint_opt(env["model"], examples, settings=SETTINGS,
                                        **_write_kwargs(env))
  np.testing.assert_array_equal(result.rows, _located_union(env, examples))
  assert _greedy_correct(env, joint["examples"], result).all()
  np.testing.assert_array_equal(np.asarray(env["model"].blocks[env["layer"]].engram.table[...]), table)


@pytest.fixture(scope="module")
def users_run(env, joint):
  """Two users trained together and each alone: multi-trigger examples, and the six facts."""
  prompts = [p for p in fact_prompts(env["users"][1]) if len(p.phrasings) > 1][:2]
  multi = facts.encode_facts(prompts, env["tokenizer"], multi_trigger=True)
  users = [multi, joint["examples"]]
  together = joint_opt.write_joint_opt_users(env["model"], users, settings=SETTINGS,
                                             **_write_kwargs(env))
  alone = joint_opt.write_joint_opt_users(env["model"], users, settings=SETTINGS, batched=False,
                                          **_write_kwargs(env))
  return dict(prompts=prompts, users=users, together=together, alone=alone)


def test_multi_trigger_example_per_phrasing(users_run):
  assert len(users_run["users"][0]) == sum(len(p.phrasings) for p in users_run["prompts"])


def test_multi_trigger_rows_for_every_phrasing(env, users_run):
  written, _ = users_run["alone"][0]
  for example in users_run["users"][0]:
    assert np.isin(_trigger(env, example), written.rows).all()


def test_users_at_once_same_rows(users_run):
  for (map_together, _), (map_alone, _) in zip(users_run["together"], users_run["alone"]):
    np.testing.assert_array_equal(map_together.rows, map_alone.rows)


def test_users_at_once_same_values(users_run):
  for (map_together, _), (map_alone, _) in zip(users_run["together"], users_run["alone"]):
    np.testing.assert_allclose(map_together.values, map_alone.values, rtol=1e-3, atol=1e-3)


def test_users_at_once_same_steps(users_run):
  steps_together = [stats.steps for _, stats in users_run["together"]]
  assert steps_together == [stats.steps for _, stats in users_run["alone"]]


# Settings, sampling and bad input.

def test_reference_schedule_settings():
  effective = joint_opt.JointOptSettings(reference_schedule=True, max_steps=1500).effective()
  assert (effective.batch_size, effective.sampling) == (1, "replacement")
  assert (effective.learning_rate, effective.schedule, effective.warmup_steps) == (0.5, "constant", 0)
  assert not effective.early_stop
  assert effective.max_steps == 1500


def test_epoch_sampling_covers_every_example():
  key = jax.random.key(3)
  drawn = [joint_loop.sample_batch(key, step, 7, 3, 4, 8, "epoch") for step in range(7)]
  stream = np.concatenate([np.asarray(index)[np.asarray(valid)] for index, valid in drawn])
  for epoch in range(3):
    assert sorted(stream[epoch * 7:(epoch + 1) * 7].tolist()) == list(range(7))


def test_epoch_sampling_ignores_padding():
  key = jax.random.key(3)
  small, _ = joint_loop.sample_batch(key, 5, 7, 3, 3, 8, "epoch")
  large, _ = joint_loop.sample_batch(key, 5, 7, 3, 3, 40, "epoch")
  np.testing.assert_array_equal(np.asarray(small), np.asarray(large))


def test_invalid_settings_rejected():
  with pytest.raises(ValueError, match="batch_size"):
    joint_opt.JointOptSettings(batch_size=0)


def test_mixed_owners_rejected(env):
  examples = [_distinct_trigger_examples(env, 0, 1)[0], _distinct_trigger_examples(env, 1, 1)[0]]
  with pytest.raises(ValueError, match="one map per user"):
    joint_opt.write_joint_opt(env["model"], examples, settings=SETTINGS, **_write_kwargs(env))


def test_no_examples_rejected(env):
  with pytest.raises(ValueError, match="no fact examples"):
    joint_opt.write_joint_opt(env["model"], [], settings=SETTINGS, **_write_kwargs(env))
