"""Train state, compiled step, sharding and checkpoints on simulated CPU devices."""

import os

import jax
import numpy as np
import pytest

from configs import tiny
from engram_jax import hashing
from engram_jax.train import checkpoint as ckpt_lib
from engram_jax.train import mesh as mesh_lib, optimizer, state as state_lib, step as step_lib

SEQ = 16
ROWS = 8
MICRO = 2


def _config(**mesh):
  cfg = tiny.get_config()
  cfg.model.depth = 2  # width 128: small enough that compilation stays short
  cfg.engram.layer_ids = (0, 1)
  cfg.model.sequence_len = SEQ
  cfg.model.vocab_size = 512
  cfg.train.device_batch_size = ROWS
  cfg.train.total_batch_tokens = ROWS * SEQ * MICRO
  cfg.train.num_iterations = 50
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.table = mesh.get("data", -1), mesh.get("fsdp", 1), mesh.get("table", 1)
  cfg.engram.table_shards = cfg.mesh.table
  return cfg


def _layout(cfg):
  return hashing.layout_from_config(cfg.engram, cfg.model.vocab_size)


def _batch(cfg, seed=0):
  """One step's batch [A, B, T] with rows hashed from identity canonical ids."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 64, size=(MICRO, ROWS, SEQ + 1)).astype(np.int32)
  inputs, targets = tokens[..., :-1], tokens[..., 1:]
  rows = np.stack([hashing.hash_rows_np(inputs[a], _layout(cfg)) for a in range(MICRO)])
  return {"inputs": inputs, "targets": targets, "engram_rows": rows}


def _setup(cfg, devices=None):
  mesh = mesh_lib.make_mesh(cfg.mesh, devices=devices)
  layout = _layout(cfg)
  table_rows = layout.table_rows
  tx = optimizer.build_optimizer(cfg, state_lib.abstract_params(cfg, table_rows))
  state, setup = state_lib.create_train_state(cfg, table_rows, tx, mesh, seed=0)
  shardings = mesh_lib.batch_shardings(mesh, with_engram=True)
  return state, setup, step_lib.compile_train_step(setup, shardings), shardings


def _put(batch, shardings):
  return {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}


def _losses(cfg, steps=3, devices=None):
  state, setup, step_fn, shardings = _setup(cfg, devices)
  batch = _batch(cfg)
  losses = []
  with jax.set_mesh(setup.mesh):
    for _ in range(steps):
      state, metrics = step_fn(state, _put(batch, shardings))
      losses.append(float(metrics["train_loss"]))
  return losses


@pytest.fixture(scope="module")
def single_device_losses():
  return _losses(_config(data=1), devices=jax.devices()[:1])


def test_step_lowers_loss(single_device_losses):
  assert single_device_losses[-1] < single_device_losses[0]


@pytest.mark.parametrize("mesh", [dict(data=8), dict(data=2, fsdp=2, table=2), dict(data=1, table=8)])
def test_sharded_losses_match_single_device(mesh, single_device_losses):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices")
  np.testing.assert_allclose(_losses(_config(**mesh)), single_device_losses, rtol=2e-4)


def test_table_sharded_over_table_axis():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices")
  state, _, _, _ = _setup(_config(data=4, table=2))
  table = state["params"]["blocks"][1]["engram"]["table"]
  assert table.sharding.spec[0] == "table"
  assert table.addressable_shards[0].data.shape[0] == table.shape[0] // 2


def test_state_is_fp32():
  state, _, _, _ = _setup(_config(data=1), devices=jax.devices()[:1])
  dtypes = {leaf.dtype for leaf in jax.tree.leaves(state["params"])}
  assert dtypes == {np.dtype("float32")}


def test_nonfinite_loss_keeps_state():
  cfg = _config(data=1)
  state, setup, step_fn, shardings = _setup(cfg, devices=jax.devices()[:1])
  before = np.asarray(state["params"]["wte"]["embedding"])
  poisoned = jax.tree.map(lambda x: x, state)
  poisoned["params"]["lm_head"]["kernel"] = poisoned["params"]["lm_head"]["kernel"] * np.nan
  with jax.set_mesh(setup.mesh):
    new_state, metrics = step_fn(poisoned, _put(_batch(cfg), shardings))
  assert not bool(metrics["finite"])
  np.testing.assert_array_equal(np.asarray(new_state["params"]["wte"]["embedding"]), before)


def test_bad_mesh_rejected():
  cfg = _config(data=3)
  with pytest.raises(ValueError, match="devices"):
    mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:8])


def test_batch_not_divisible_rejected():
  mesh = mesh_lib.make_mesh(_config(data=8).mesh) if jax.device_count() >= 8 else None
  if mesh is None:
    pytest.skip("needs 8 devices")
  with pytest.raises(ValueError, match="device_batch_size"):
    mesh_lib.batch_size_per_shard(12, mesh)


def _meta(cfg):
  return ckpt_lib.build_meta(cfg, tokenizer_fingerprint="tok", layout=_layout(cfg))


def _save_after_steps(cfg, workdir, steps):
  state, setup, step_fn, shardings = _setup(cfg, devices=jax.devices()[:1])
  manager = ckpt_lib.make_manager(workdir, save_every=1, max_to_keep=2)
  with jax.set_mesh(setup.mesh):
    for _ in range(steps):
      state, _ = step_fn(state, _put(_batch(cfg), shardings))
  ckpt_lib.save(manager, steps, state, {"position": steps}, _meta(cfg), force=True)
  manager.wait_until_finished()
  with jax.set_mesh(setup.mesh):
    _, metrics = step_fn(state, _put(_batch(cfg, seed=1), shardings))
  return float(metrics["train_loss"])


def _restore_and_step(cfg, workdir, devices=None):
  state, setup, step_fn, shardings = _setup(cfg, devices)
  manager = ckpt_lib.make_manager(workdir, save_every=1, max_to_keep=2)
  step, state, data_state = ckpt_lib.restore_latest(manager, setup.abstract_state, setup.state_shardings, _meta(cfg))
  with jax.set_mesh(setup.mesh):
    _, metrics = step_fn(state, _put(_batch(cfg, seed=1), shardings))
  return step, data_state, float(metrics["train_loss"])


def test_checkpoint_round_trip(tmp_path):
  cfg = _config(data=1)
  expected = _save_after_steps(cfg, str(tmp_path), steps=2)
  step, data_state, loss = _restore_and_step(cfg, str(tmp_path), devices=jax.devices()[:1])
  assert step == 2
  assert data_state == {"position": 2}
  assert loss == pytest.approx(expected, rel=1e-6)


def test_restore_onto_other_mesh(tmp_path):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices")
  expected = _save_after_steps(_config(data=1), str(tmp_path), steps=2)
  _, _, loss = _restore_and_step(_config(data=4, fsdp=2), str(tmp_path))
  assert loss == pytest.approx(expected, rel=2e-4)


def test_incompatible_checkpoint_rejected(tmp_path):
  _save_after_steps(_config(data=1), str(tmp_path), steps=1)
  other = _config(data=1)
  other.model.depth = 3
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="model.depth"):
    _restore_and_step(other, str(tmp_path), devices=jax.devices()[:1])


def test_uncommitted_save_is_ignored(tmp_path):
  cfg = _config(data=1)
  _save_after_steps(cfg, str(tmp_path), steps=1)
  # A save killed before its commit leaves only a temporary directory behind.
  os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-1234" / "state")
  step, _, _ = _restore_and_step(cfg, str(tmp_path), devices=jax.devices()[:1])
  assert step == 1


def test_corrupt_checkpoint_reported(tmp_path):
  cfg = _config(data=1)
  _save_after_steps(cfg, str(tmp_path), steps=1)
  # Overwrite the array data and its index, as a failing disk would.
  for path in (tmp_path / "1" / "state").rglob("*"):
    if path.is_file() and (path.parent.name == "d" or path.name == "manifest.ocdbt"):
      path.write_bytes(b"garbage")
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="corrupt"):
    _restore_and_step(cfg, str(tmp_path), devices=jax.devices()[:1])
