"""Batched forward passes with per-sequence memory: greedy decoding, residuals, per-row loss.

Every sequence of a batch carries its own override map (or none), so several
users share one forward pass and the shared table is never written. All
shapes are fixed per call (batch, buffer length, override slots, decode steps),
so one compilation serves every batch and every decoding step. Decoding
recomputes the whole fixed-size buffer at each step, without a KV cache. Slots
after a sequence's current length hold filler tokens. Causal attention, the
causal conv and the n-gram hash keep them from reaching earlier positions.

Shape letters: N sequences, B batch, T buffer length, D width, V vocabulary,
L Engram layers, G hash heads, K override slots, W row width, S decode steps.
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engram_jax import hashing
from engram_jax.memory.composition import stack_overrides
from engram_jax.memory.maps import SLOT_MULTIPLE, OverrideMap
from engram_jax.model.overrides import RowOverrides
from engram_jax.train.pretrained import Pretrained

BUFFER_MULTIPLE = 8  # buffer lengths are rounded up to this, so nearby lengths share a compile


@dataclasses.dataclass
class DecodeResult:
  """Greedy decoding of N prompts: the gold first token's rank and the greedy tokens of each."""
  ranks_N: np.ndarray  # int64, logits strictly above the gold's at the trigger position
  tokens: list[np.ndarray]  # int32 greedy tokens per prompt, the first at the trigger position


class ModelRunner:
  """A pretrained model split for jit, with its memory layer and hash inputs on device."""

  def __init__(self, pre: Pretrained):
    if pre.layout is None:
      raise ValueError(f"The model in {pre.workdir} has no Engram layer, so memory cannot be evaluated.")
    self.pre = pre
    self.layer = pre.memory_layer
    self.graphdef, self.state = nnx.split(pre.model)
    self.canonical_V = jnp.asarray(pre.canonical_map.raw_to_canonical, jnp.int32)
    self.row_width = int(pre.model.blocks[self.layer].engram.row_width)
    self.max_positions = int(pre.model.max_positions)
    self.pad_id = int(pre.tokenizer.bos_id)

  def overrides(self, maps: Sequence[OverrideMap | None], slots: int) -> RowOverrides:
    return stack_overrides(list(maps), slots=slots, row_width=self.row_width)


def _forward(graphdef, state, ids_BT, canonical_V, overrides: RowOverrides, layout, layer):
  """Run every block with `overrides` at `layer`; return (model, x, kept), x [B, T, D]."""
  model = nnx.merge(graphdef, state)
  rows_LBTG = hashing.hash_rows_jax(canonical_V[ids_BT], layout)
  x0_BTD = model.embed(ids_BT)
  x_BTD, kept_BTD = model.run_blocks(x0_BTD, x0_BTD, ids_BT, rows_LBTG, overrides={layer: overrides})
  return model, x_BTD, kept_BTD


def _logits_at(model, x_BTD, kept_BTD, pos_B) -> jax.Array:
  """fp32 logits [B, V] at one position per sequence."""
  index_B11 = pos_B[:, None, None]
  x_B1D = jnp.take_along_axis(x_BTD, index_B11, axis=1)
  kept_B1D = jnp.take_along_axis(kept_BTD, index_B11, axis=1)
  return model.logits(x_B1D, kept_B1D)[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "layout", "layer", "steps"))
def _decode_batch(state, ids_BT, lengths_B, gold_B, num_steps, canonical_V, overrides, *, graphdef,
                  layout, layer, steps):
  """Rank the gold at the trigger, then greedily decode `num_steps` <= `steps` tokens.

  `num_steps` is traced, so batches that need fewer tokens stop early without
  a new compilation; unused token slots stay 0.
  """
  B = ids_BT.shape[0]
  batch_B = jnp.arange(B)

  def next_token(ids_BT, lengths_B):
    model, x_BTD, kept_BTD = _forward(graphdef, state, ids_BT, canonical_V, overrides, layout, layer)
    return _logits_at(model, x_BTD, kept_BTD, lengths_B - 1)

  # 1. Trigger position: the gold's rank and the first greedy token.
  logits_BV = next_token(ids_BT, lengths_B)
  gold_logit_B1 = jnp.take_along_axis(logits_BV, gold_B[:, None], axis=1)
  ranks_B = jnp.sum(logits_BV > gold_logit_B1, axis=1)
  first_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  ids_BT = ids_BT.at[batch_B, lengths_B].set(first_B)
  tokens_BS = jnp.zeros((B, steps), jnp.int32).at[:, 0].set(first_B)

  # 2. Later steps: append the argmax at each sequence's current length.
  def body(step, carry):
    ids_BT, tokens_BS = carry
    lengths_B_now = lengths_B + step
    token_B = jnp.argmax(next_token(ids_BT, lengths_B_now), axis=-1).astype(jnp.int32)
    return ids_BT.at[batch_B, lengths_B_now].set(token_B), tokens_BS.at[:, step].set(token_B)

  _, tokens_BS = jax.lax.fori_loop(1, num_steps, body, (ids_BT, tokens_BS))
  return ranks_B, tokens_BS


@functools.partial(jax.jit, static_argnames=("graphdef", "layout", "layer"))
def _offtrigger_change(state, ids_BT, lengths_B, canonical_V, overrides, no_overrides, *, graphdef,
                       layout, layer):
  """Largest |x_map - x_base| of the final residual stream before each trigger, [B]."""
  _, x_BTD, _ = _forward(graphdef, state, ids_BT, canonical_V, overrides, layout, layer)
  _, base_BTD, _ = _forward(graphdef, state, ids_BT, canonical_V, no_overrides, layout, layer)
  T = ids_BT.shape[1]
  before_trigger_BT = jnp.arange(T)[None, :] < (lengths_B[:, None] - 1)
  change_BT = jnp.max(jnp.abs(x_BTD - base_BTD), axis=-1).astype(jnp.float32)
  return jnp.max(jnp.where(before_trigger_BT, change_BT, 0.0), axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "layer"))
def _row_nats(state, inputs_BT, targets_BT, rows_LBTG, byte_lengths_V, overrides, *, graphdef, layer):
  """Summed nats and bytes per row over targets with a positive byte length, each [B]."""
  model = nnx.merge(graphdef, state)
  logits_BTV = model(inputs_BT, rows_LBTG, overrides={layer: overrides})
  logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
  safe_BT = jnp.maximum(targets_BT, 0)
  nll_BT = -jnp.take_along_axis(logp_BTV, safe_BT[..., None], axis=-1)[..., 0]
  bytes_BT = jnp.where(targets_BT >= 0, byte_lengths_V[safe_BT], 0)
  counted_BT = bytes_BT > 0
  return jnp.sum(jnp.where(counted_BT, nll_BT, 0.0), axis=1), jnp.sum(bytes_BT, axis=1)


def padded_slots(maps: Sequence[OverrideMap | None]) -> int:
  """Return override slots for `maps`: the most rows, rounded up to a multiple of SLOT_MULTIPLE."""
  largest = max([0] + [m.num_rows for m in maps if m is not None])
  return max(SLOT_MULTIPLE, -(-largest // SLOT_MULTIPLE) * SLOT_MULTIPLE)


def _buffer(runner: ModelRunner, prompts: Sequence[Sequence[int]], extra: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-pad prompts into int32 [N, T] with T a multiple of BUFFER_MULTIPLE."""
  if not prompts or any(len(p) < 2 for p in prompts):
    raise ValueError("Every prompt needs at least 2 tokens (BOS and one more).")
  longest = max(len(p) for p in prompts) + extra
  length = -(-longest // BUFFER_MULTIPLE) * BUFFER_MULTIPLE
  if length > runner.max_positions:
    raise ValueError(f"Prompts of up to {longest} tokens with decoding exceed the model's "
                     f"{runner.max_positions} positions; shorten the prompts or decode fewer tokens.")
  ids_NT = np.full((len(prompts), length), runner.pad_id, np.int32)
  for n, prompt in enumerate(prompts):
    ids_NT[n, :len(prompt)] = prompt
  return ids_NT, np.array([len(p) for p in prompts], np.int32)


def _batches(total: int, batch_size: int):
  for start in range(0, total, batch_size):
    index = np.arange(start, start + batch_size)
    yield index, index < total


def decode_greedy(runner: ModelRunner, prompts: Sequence[Sequence[int]],
                  maps: Sequence[OverrideMap | None], gold_first_ids: Sequence[int],
                  num_tokens: Sequence[int], *, steps: int, batch_size: int = 32,
                  slots: int | None = None) -> DecodeResult:
  """Rank each gold first token and greedily decode `num_tokens[n]` tokens, each prompt with its map.

  `steps` (at least max(num_tokens)) fixes the buffer, so every call with the
  same `steps`, `batch_size` and `slots` reuses one compilation.
  """
  if not len(prompts) == len(maps) == len(gold_first_ids) == len(num_tokens):
    raise ValueError(f"Got {len(prompts)} prompts, {len(maps)} maps, {len(gold_first_ids)} golds and "
                     f"{len(num_tokens)} token counts; pass one of each per sequence.")
  if min(num_tokens, default=1) < 1 or max(num_tokens, default=1) > steps:
    raise ValueError(f"Token counts must lie in [1, steps={steps}]; got {min(num_tokens)} to "
                     f"{max(num_tokens)}. Raise steps.")
  slots = padded_slots(maps) if slots is None else slots
  ids_NT, lengths_N = _buffer(runner, prompts, steps)
  gold_N = np.asarray(gold_first_ids, np.int32)
  ranks, tokens = [], []
  for index, real in _batches(len(prompts), batch_size):
    take = np.where(real, index, 0)
    overrides = runner.overrides([maps[i] if r else None for i, r in zip(take, real)], slots)
    needed = max(num_tokens[i] for i in index[real])
    ranks_B, tokens_BS = _decode_batch(
        runner.state, jnp.asarray(ids_NT[take]), jnp.asarray(lengths_N[take]),
        jnp.asarray(gold_N[take]), jnp.asarray(needed, jnp.int32), runner.canonical_V, overrides,
        graphdef=runner.graphdef, layout=runner.pre.layout, layer=runner.layer, steps=steps)
    ranks.append(np.asarray(ranks_B)[real])
    tokens_BS = np.asarray(tokens_BS)
    tokens += [tokens_BS[b, :num_tokens[i]] for b, i in enumerate(index[real])]
  return DecodeResult(np.concatenate(ranks).astype(np.int64), tokens)


def offtrigger_residual_change(runner: ModelRunner, prompts: Sequence[Sequence[int]],
                               maps: Sequence[OverrideMap | None], *, batch_size: int = 32,
                               slots: int | None = None) -> np.ndarray:
  """Largest final-residual change per prompt at positions before its trigger, float [N]."""
  slots = padded_slots(maps) if slots is None else slots
  ids_NT, lengths_N = _buffer(runner, prompts, 0)
  out = []
  for index, real in _batches(len(prompts), batch_size):
    take = np.where(real, index, 0)
    overrides = runner.overrides([maps[i] if r else None for i, r in zip(take, real)], slots)
    empty = runner.overrides([None] * len(take), slots)
    change_B = _offtrigger_change(
        runner.state, jnp.asarray(ids_NT[take]), jnp.asarray(lengths_N[take]), runner.canonical_V,
        overrides, empty, graphdef=runner.graphdef, layout=runner.pre.layout, layer=runner.layer)
    out.append(np.asarray(change_B)[real])
  return np.concatenate(out)


def row_nats(runner: ModelRunner, batch: dict, maps: Sequence[OverrideMap | None], byte_lengths_V,
             slots: int) -> tuple[np.ndarray, np.ndarray]:
  """Summed nats and bytes of each row of one validation batch, each row with its map."""
  overrides = runner.overrides(list(maps), slots)
  nats_B, bytes_B = _row_nats(
      runner.state, jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"]),
      jnp.asarray(batch["engram_rows"]), byte_lengths_V, overrides, graphdef=runner.graphdef,
      layer=runner.layer)
  return np.asarray(nats_B, np.float64), np.asarray(bytes_B, np.int64)
