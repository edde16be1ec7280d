"""Validation bits per byte and short greedy samples during pretraining."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from engram_jax import hashing
from engram_jax.model.gpt import ShardingContext
from engram_jax.train.state import TrainSetup


def bits_per_byte(nats: float, num_bytes: float) -> float:
  """bpb = sum of nats / (ln 2 * sum of bytes) over targets with a positive byte length."""
  if num_bytes <= 0:
    raise ValueError("No validation target has a positive byte length; bpb is undefined.")
  return float(nats) / (math.log(2.0) * float(num_bytes))


def evaluate_bpb(eval_fn, params, batches, byte_lengths_V) -> dict:
  """Run a compiled eval step over fixed global batches; return bpb and counts."""
  totals = {"nats": 0.0, "bytes": 0, "tokens": 0}
  for batch in batches:
    out = jax.device_get(eval_fn(params, batch, byte_lengths_V))
    totals["nats"] += float(out["nats"])
    totals["bytes"] += int(out["bytes"])
    totals["tokens"] += int(out["tokens"])
  return {"bpb": bits_per_byte(totals["nats"], totals["bytes"]), **totals}


@functools.partial(jax.jit, static_argnums=(0, 4))
def _next_token(setup: TrainSetup, params, buffer_1S, position, layout, canonical_V):
  """Greedy token after buffer[:, :position]; later buffer slots do not matter (causal)."""
  model = setup.merge(params)
  rows = None
  if layout is not None:
    canonical_1S = jnp.take(canonical_V, buffer_1S, axis=0)
    rows = hashing.hash_rows_jax(canonical_1S, layout)
  sharding = ShardingContext()
  if setup.mesh.shape["table"] > 1:
    # One row cannot split over the batch axes; the table stays row-sharded.
    sharding = ShardingContext(mesh=setup.mesh, table_axis="table", batch_axes=None)
  logits_1SV = model(buffer_1S, rows, sharding=sharding)
  return jnp.argmax(logits_1SV[0, position - 1]).astype(jnp.int32)


def greedy_sample(setup: TrainSetup, params, prompt_ids: list[int], num_tokens: int, *,
                  layout, canonical_map) -> list[int]:
  """Greedy continuation of `prompt_ids` by full recompute over a fixed-size buffer.

  One compilation serves every step because the buffer length is fixed.
  """
  length = len(prompt_ids) + num_tokens
  buffer = np.zeros((1, length), np.int32)
  buffer[0, :len(prompt_ids)] = prompt_ids
  canonical_V = jnp.asarray(canonical_map, jnp.int32) if layout is not None else None
  out = []
  for position in range(len(prompt_ids), length):
    token = int(_next_token(setup, params, jnp.asarray(buffer), position, layout, canonical_V))
    buffer[0, position] = token
    out.append(token)
  return out


def matmul_flops_per_token(param_sizes: dict[str, int], *, depth: int, width: int,
                           sequence_len: int) -> float:
  """Training FLOPs per token: 6 per matmul weight plus causal attention scores."""
  matmul = sum(param_sizes.get(g, 0) for g in ("transformer_matrices", "lm_head", "engram_projections"))
  return 6.0 * matmul + 12.0 * depth * width * sequence_len


# Dense bf16 peak FLOP/s per device, for the MFU estimate (vendor datasheets).
PEAK_FLOPS_BY_KIND = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
    "h100": 989e12,
    "h200": 989e12,
    "a100": 312e12,
}


def peak_flops(configured: float) -> float | None:
  """Per-device peak FLOP/s: the configured value, else a guess from the device kind."""
  if configured > 0:
    return configured
  kind = jax.devices()[0].device_kind.lower()
  for name, flops in PEAK_FLOPS_BY_KIND.items():
    if name in kind:
      return flops
  return None
