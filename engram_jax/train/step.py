"""Compiled train and evaluation steps.

Shape letters: A micro-steps per optimiser step, B rows, T sequence,
L Engram layers, G hash heads, V vocabulary.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from engram_jax.model.gpt import ShardingContext, cross_entropy_loss, token_nll
from engram_jax.train import mesh as mesh_lib
from engram_jax.train.state import TrainSetup


def _sharding_context(setup: TrainSetup) -> ShardingContext:
  table_size = setup.mesh.shape["table"]
  if table_size == 1:
    return ShardingContext()
  return ShardingContext(mesh=setup.mesh, table_axis="table", batch_axes=mesh_lib.BATCH_AXES)


def _mean_loss(setup: TrainSetup, params, batch) -> jax.Array:
  model = setup.merge(params)
  logits_BTV = model(batch["inputs"], batch.get("engram_rows"), sharding=_sharding_context(setup))
  return cross_entropy_loss(logits_BTV, batch["targets"])


def train_step(setup: TrainSetup, state: dict, batch: dict) -> tuple[dict, dict]:
  """One optimiser step over A micro-batches, accumulating fp32 gradients.

  A non-finite loss leaves the state unchanged and is reported in the metrics,
  so the caller can stop with the last good parameters intact.
  """
  params = state["params"]
  grad_fn = jax.value_and_grad(functools.partial(_mean_loss, setup))

  def micro_step(carry, micro_batch):
    grads_acc, loss_acc = carry
    loss, grads = grad_fn(params, micro_batch)
    grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
    return (grads_acc, loss_acc + loss), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  (grads, loss_sum), _ = jax.lax.scan(micro_step, (zeros, jnp.float32(0.0)), batch)
  num_micro = batch["inputs"].shape[0]
  grads = jax.tree.map(lambda g: g / num_micro, grads)
  loss = loss_sum / num_micro

  updates, opt_state = setup.tx.update(grads, state["opt_state"], params)
  new_state = {
      "params": optax.apply_updates(params, updates),
      "opt_state": opt_state,
      "step": state["step"] + 1,
  }
  finite = jnp.isfinite(loss)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  grad_norm = optax.tree.norm(grads)
  return new_state, {"train_loss": loss, "finite": finite, "grad_norm": grad_norm}


def compile_train_step(setup: TrainSetup, batch_shardings: dict):
  """jit the train step with explicit shardings and a donated state."""
  return jax.jit(
      functools.partial(train_step, setup),
      in_shardings=(setup.state_shardings, batch_shardings),
      out_shardings=(setup.state_shardings, None),
      donate_argnums=(0,))


def eval_step(setup: TrainSetup, params, batch: dict, byte_lengths_V: jax.Array, *,
              suppress_engram: bool) -> dict:
  """Summed nats and bytes over targets with a positive byte length (for bpb)."""
  model = setup.merge(params)
  logits_BTV = model(batch["inputs"], batch.get("engram_rows"), suppress_engram=suppress_engram,
                     sharding=_sharding_context(setup))
  nll_BT = token_nll(logits_BTV, batch["targets"])
  bytes_BT = jnp.where(batch["targets"] >= 0, byte_lengths_V[jnp.maximum(batch["targets"], 0)], 0)
  counted_BT = bytes_BT > 0
  return {
      "nats": jnp.sum(jnp.where(counted_BT, nll_BT, 0.0)),
      "bytes": jnp.sum(bytes_BT),
      "tokens": jnp.sum(counted_BT),
  }


def compile_eval_step(setup: TrainSetup, batch_shardings: dict, *, suppress_engram: bool):
  return jax.jit(
      functools.partial(eval_step, setup, suppress_engram=suppress_engram),
      in_shardings=(setup.state_shardings["params"], batch_shardings, None))
