"""Keep windows and the keep term of Joint OPT, on a tiny random model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from engram_jax import config as config_lib
from engram_jax import hashing
from engram_jax.data import shards
from engram_jax.memory import facts, joint_opt, keep, maps
from engram_jax.memory.composition import stack_overrides
from engram_jax.model import factory
from engram_jax.model.overrides import UNUSED_ROW, RowOverrides
from engram_jax.tokenizer import build_canonical_map, train_bpe
from engram_jax.users import fact_prompts, generate_users, persona_documents

VOCAB = 1024
KEEP = keep.KeepSettings(windows=32, before=12, after=4, top_k=8)
SETTINGS = joint_opt.JointOptSettings(max_steps=60, patience=3, keep=KEEP)


@pytest.fixture(scope="module")
def env():
  documents = list(persona_documents(300, 0))
  tokenizer = train_bpe(documents, VOCAB)
  canonical_map = build_canonical_map(tokenizer)
  cfg = tiny.get_config()
  cfg.model.sequence_len = 64
  cfg.model.vocab_size = VOCAB
  layout = hashing.layout_from_config(cfg.engram, canonical_map.num_canonical)
  model = factory.create_model(cfg, layout=layout, seed=0)
  user = generate_users(1, 0)[0]
  examples = facts.encode_facts(fact_prompts(user), tokenizer)[:6]
  stream = np.concatenate([tokenizer.encode(d, prepend_bos=True) for d in documents[:120]])
  layer = cfg.engram.layer_ids[-1]
  return dict(tokenizer=tokenizer, canonical_map=canonical_map, layout=layout, model=model,
              examples=examples, layer=layer, row_width=config_lib.row_width(cfg.engram), stream=stream.astype(np.int32),
              text=keep.keep_text(stream, layout, canonical_map, layer),
              fingerprint=maps.model_fingerprint(cfg, tokenizer.fingerprint, layout))


def _rows(env) -> np.ndarray:
  located = [facts.locate_rows(e, env["layout"], env["canonical_map"], env["layer"]).ravel()
             for e in env["examples"]]
  rows = np.unique(np.concatenate(located))
  return rows[rows != facts.NO_ROW].astype(np.int32)


def _window_rows(env, ids_MT) -> np.ndarray:
  canonical = facts.canonical_ids(ids_MT, env["canonical_map"], env["layout"])
  rows_LMTG = hashing.hash_rows_np(canonical, env["layout"])
  return rows_LMTG[env["layout"].layer_ids.index(env["layer"])]


def test_stream_rows_match_hash(env):
  canonical = facts.canonical_ids(env["stream"][None], env["canonical_map"], env["layout"])
  expected = hashing.hash_rows_np(canonical, env["layout"])[-1, 0]
  np.testing.assert_array_equal(env["text"].rows_PG, expected)


def test_windows_start_with_bos(env):
  ids_MT, _ = keep.draw_windows(env["text"], _rows(env), KEEP, env["tokenizer"].bos_id)
  assert (ids_MT[:, 0] == env["tokenizer"].bos_id).all()


def test_window_hit_at_index_before(env):
  rows = _rows(env)
  ids_MT, _ = keep.draw_windows(env["text"], rows, KEEP, env["tokenizer"].bos_id)
  hit_M = np.isin(_window_rows(env, ids_MT)[:, KEEP.before], rows).any(axis=-1)
  assert hit_M.all()


def test_hit_count(env):
  rows = _rows(env)
  _, hits = keep.draw_windows(env["text"], rows, KEEP, env["tokenizer"].bos_id)
  hit_P = np.isin(env["text"].rows_PG, rows).any(axis=-1)
  assert hits == hit_P[KEEP.before - 1:hit_P.size - KEEP.after + 1].sum()


def test_no_hits_gives_bos_windows(env):
  unread = np.setdiff1d(np.arange(10), env["text"].rows_PG)[:1].astype(np.int32)
  ids_MT, hits = keep.draw_windows(env["text"], unread, KEEP, env["tokenizer"].bos_id)
  assert hits == 0
  assert (ids_MT == env["tokenizer"].bos_id).all()


def test_bad_settings_rejected():
  with pytest.raises(ValueError, match="windows"):
    keep.KeepSettings(windows=0)


def test_bad_text_rejected(env):
  with pytest.raises(ValueError, match="1-D integer"):
    keep.keep_text(np.zeros((2, 3), np.int32), env["layout"], env["canonical_map"], env["layer"])


@pytest.fixture(scope="module")
def cache(env):
  result, hits = keep.build_cache(env["model"], env["text"], _rows(env), env["layout"],
                                  env["canonical_map"], env["layer"], KEEP,
                                  env["tokenizer"].bos_id)
  return result


def _kl(env, cache, override_map) -> float:
  index = jnp.arange(KEEP.windows)
  if override_map is None:
    overrides = RowOverrides(jnp.full((KEEP.windows, 8), UNUSED_ROW, jnp.int32),
                             jnp.zeros((KEEP.windows, 8, env["row_width"]), jnp.float32))
  else:
    overrides = stack_overrides([override_map] * KEEP.windows)
  return float(keep.keep_loss(env["model"], cache, index, overrides, env["layer"], KEEP.before))


def test_bare_model_term_is_topk_tail(env, cache):
  logits_MTV = env["model"](cache.ids_MT, cache.rows_LMTG)[:, KEEP.before:]
  logp_MTV = jax.nn.log_softmax(logits_MTV, axis=-1)
  top_mass_MT = jnp.exp(jax.lax.top_k(logp_MTV, KEEP.top_k)[0]).sum(-1)
  expected = -jnp.log(top_mass_MT).mean()
  assert _kl(env, cache, None) == pytest.approx(float(expected), rel=1e-4)


def test_large_values_raise_term(env, cache):
  rows = _rows(env)
  loud = maps.make_map(env["layer"], rows, np.full((rows.size, env["row_width"]), 50.0),
                       owner="x", fact_keys=["k"], strategy="random", settings={},
                       model_fingerprint=env["fingerprint"])
  assert _kl(env, cache, loud) > _kl(env, cache, None) + 1e-3


def test_keep_weight_needs_text(env):
  settings = dataclasses.replace(SETTINGS, keep_weight=1.0)
  with pytest.raises(ValueError, match="keep text"):
    joint_opt.write_joint_opt(env["model"], env["examples"], env["layout"], env["canonical_map"],
                              model_fingerprint=env["fingerprint"], settings=settings)


@pytest.fixture(scope="module")
def kept_run(env):
  before = jax.tree.map(np.array, nnx.state(env["model"]))
  kwargs = dict(model_fingerprint=env["fingerprint"], keep_text=env["stream"])
  plain, _ = joint_opt.write_joint_opt(env["model"], env["examples"], env["layout"],
                                       env["canonical_map"], settings=SETTINGS, **kwargs)
  strong = dataclasses.replace(SETTINGS, keep_weight=50.0)
  kept, stats = joint_opt.write_joint_opt(env["model"], env["examples"], env["layout"],
                                          env["canonical_map"], settings=strong, **kwargs)
  return dict(before=before, plain=plain, kept=kept, stats=stats)


def test_keep_run_leaves_model_unchanged(env, kept_run):
  after = jax.tree.map(np.array, nnx.state(env["model"]))
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, kept_run["before"], after)))


def test_keep_run_records_hits(kept_run):
  assert kept_run["kept"].settings["keep_hits"] > 0


def test_keep_term_lowers_window_kl(env, cache, kept_run):
  assert _kl(env, cache, kept_run["kept"]) < _kl(env, cache, kept_run["plain"])


def _table_rows(env, rows) -> np.ndarray:
  return np.asarray(env["model"].blocks[env["layer"]].engram.table[...])[rows]


def test_table_init_starts_at_pretrained_values(env):
  settings = joint_opt.JointOptSettings(max_steps=0, anchor_weight=0.0)
  result, _ = joint_opt.write_joint_opt(env["model"], env["examples"], env["layout"],
                                        env["canonical_map"], model_fingerprint=env["fingerprint"],
                                        settings=settings)
  np.testing.assert_array_equal(result.values, _table_rows(env, result.rows))


def _distance_to_table(env, anchor_weight: float) -> float:
  settings = dataclasses.replace(SETTINGS, anchor_weight=anchor_weight)
  result, _ = joint_opt.write_joint_opt(env["model"], env["examples"], env["layout"],
                                        env["canonical_map"], model_fingerprint=env["fingerprint"],
                                        settings=settings)
  return float(np.abs(result.values - _table_rows(env, result.rows)).mean())


def test_anchor_holds_rows_near_table(env):
  assert _distance_to_table(env, 10.0) < 0.5 * _distance_to_table(env, 0.0)


def test_reference_schedule_drops_anchor_and_init():
  effective = joint_opt.JointOptSettings(reference_schedule=True, keep_weight=1.0).effective()
  assert (effective.init, effective.anchor_weight, effective.keep_weight) == ("unembed_p", 0.0, 0.0)


def test_bad_init_rejected():
  with pytest.raises(ValueError, match="init"):
    joint_opt.JointOptSettings(init="zeros")


def test_row_reads_count_lookups(env):
  rows = _rows(env)
  expected = [(env["text"].rows_PG == r).sum() for r in rows]
  np.testing.assert_array_equal(keep.row_reads(env["text"], rows), expected)


def test_reads_anchor_needs_text(env):
  settings = dataclasses.replace(SETTINGS, anchor="reads")
  with pytest.raises(ValueError, match="keep text"):
    joint_opt.write_joint_opt(env["model"], env["examples"], env["layout"], env["canonical_map"],
                              model_fingerprint=env["fingerprint"], settings=settings)


def test_reads_anchor_runs(env):
  settings = dataclasses.replace(SETTINGS, anchor="reads", max_steps=8)
  result, _ = joint_opt.write_joint_opt(env["model"], env["examples"], env["layout"],
                                        env["canonical_map"], model_fingerprint=env["fingerprint"],
                                        settings=settings, keep_text=env["stream"])
  assert result.settings["anchor"] == "reads"
