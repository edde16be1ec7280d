"""Teacher-forced forward passes over fact examples, with the prefix computed once.

Memory writers train values of one Engram layer (the target block) with the
model frozen. The stream that enters the target block does not depend on
those values, so `compute_prefix` runs blocks [0, target) once per example.
It keeps what `GPT.run_blocks` needs to resume there:
* the stream leaving block target - 1 (run_blocks applies the target block's
  resid/x0 mix itself),
* x0, the ids and every Engram layer's rows,
* the backout stream, when the backout block lies below the target.
`answer_logits` then runs blocks [target, L) and computes the logits only at
the positions that predict answer tokens.

Shape letters: N examples, B batch of examples, T sequence, D width,
V vocabulary, L Engram layers, G hash heads, A answer slots.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engram_jax import hashing
from engram_jax.hashing import HashLayout
from engram_jax.memory import facts as facts_lib
from engram_jax.model.gpt import GPT
from engram_jax.model.overrides import RowOverrides


class FactBatch(NamedTuple):
  """Examples padded to one shape, as numpy arrays.

  Sequences are right-padded with their BOS id. Causal attention, the causal
  conv and the n-gram hash keep padding from reaching real positions. Padded
  example slots repeat example 0 and have `example_mask_N` False.
  """
  ids_NT: np.ndarray  # int32 raw ids, prompt + answer
  rows_LNTG: np.ndarray  # int32 global rows of every Engram layer
  answer_pos_NA: np.ndarray  # int32 position predicting each answer token
  answer_ids_NA: np.ndarray  # int32 answer tokens (0 in unused slots)
  answer_mask_NA: np.ndarray  # bool, real answer tokens
  example_mask_N: np.ndarray  # bool, real examples


class PrefixCache(NamedTuple):
  """Activations entering the target block, plus what the rest of the model reads."""
  x_NTD: jax.Array  # stream leaving block target - 1 (x0 when the target is block 0)
  x0_NTD: jax.Array
  kept_NTD: jax.Array | None  # backout stream, None when it is produced at or after the target
  ids_NT: jax.Array
  rows_LNTG: jax.Array
  answer_pos_NA: jax.Array
  answer_ids_NA: jax.Array
  answer_mask_NA: jax.Array


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def build_fact_batch(examples: Sequence[facts_lib.FactExample], layout: HashLayout,
                     canonical_map: Any, *, num_examples: int | None = None,
                     length: int | None = None, answer_slots: int | None = None) -> FactBatch:
  """Pad `examples` to [num_examples, length] with `answer_slots` answer slots and hash them.

  Sizes default to the smallest that fit; larger ones let several users share
  one compiled program.
  """
  if not examples:
    raise ValueError("No fact examples were given; a batch needs at least one.")
  longest = max(len(e.sequence_ids) for e in examples)
  max_answers = max(len(e.answer_ids) for e in examples)
  N = len(examples) if num_examples is None else num_examples
  T = longest if length is None else length
  A = max_answers if answer_slots is None else answer_slots
  if N < len(examples) or T < longest or A < max_answers:
    raise ValueError(
        f"Padded sizes (examples={N}, length={T}, answer_slots={A}) are smaller than the examples "
        f"need ({len(examples)}, {longest}, {max_answers}); pass larger sizes or None.")

  padded = list(examples) + [examples[0]] * (N - len(examples))
  ids_NT = np.empty((N, T), np.int32)
  answer_pos_NA = np.zeros((N, A), np.int32)
  answer_ids_NA = np.zeros((N, A), np.int32)
  answer_mask_NA = np.zeros((N, A), bool)
  for n, example in enumerate(padded):
    sequence = example.sequence_ids
    ids_NT[n] = example.prompt_ids[0]
    ids_NT[n, :len(sequence)] = sequence
    P = len(example.answer_ids)
    answer_pos_NA[n, :P] = example.answer_positions
    answer_ids_NA[n, :P] = example.answer_ids
    answer_mask_NA[n, :P] = True
  rows_LNTG = hashing.hash_rows_np(
      facts_lib.canonical_ids(ids_NT, canonical_map, layout), layout)
  example_mask_N = np.arange(N) < len(examples)
  return FactBatch(ids_NT, rows_LNTG, answer_pos_NA, answer_ids_NA, answer_mask_NA, example_mask_N)


def check_target_layer(model: GPT, layer: int) -> None:
  if layer not in model.engram_layer_ids:
    raise ValueError(
        f"layer={layer} has no Engram; the model's Engram blocks are {model.engram_layer_ids}.")


def check_length(model: GPT, length: int) -> None:
  if length > model.max_positions:
    raise ValueError(
        f"A fact sequence of {length} tokens exceeds the model's {model.max_positions} rotary "
        "positions; shorten the prompt or answer.")


def prefix_activations(model: GPT, ids_BT, rows_LBTG, layer: int):
  """Run blocks [0, layer); return the stream leaving them, x0 and the backout stream."""
  x0_BTD = model.embed(ids_BT)
  x_BTD, kept_BTD = model.run_blocks(x0_BTD, x0_BTD, ids_BT, rows_LBTG, start=0, stop=layer)
  return x_BTD, x0_BTD, kept_BTD


def _prefix_chunk(graphdef, state, ids_BT, rows_LBTG, layer: int):
  return prefix_activations(nnx.merge(graphdef, state), ids_BT, rows_LBTG, layer)


_prefix_chunk_jit = jax.jit(_prefix_chunk, static_argnums=(0, 4))


def compute_prefix(model: GPT, batch: FactBatch, layer: int, *, chunk: int = 64) -> PrefixCache:
  """Run blocks [0, layer) once for every example of `batch`, `chunk` examples at a time."""
  check_target_layer(model, layer)
  check_length(model, batch.ids_NT.shape[1])
  graphdef, state = nnx.split(model)
  parts = []
  for start in range(0, batch.ids_NT.shape[0], chunk):
    stop = start + chunk
    parts.append(_prefix_chunk_jit(
        graphdef, state, jnp.asarray(batch.ids_NT[start:stop]),
        jnp.asarray(batch.rows_LNTG[:, start:stop]), layer))
  x_NTD, x0_NTD, kept_NTD = (
      None if parts[0][i] is None else jnp.concatenate([p[i] for p in parts]) for i in range(3))
  return PrefixCache(
      x_NTD, x0_NTD, kept_NTD, jnp.asarray(batch.ids_NT), jnp.asarray(batch.rows_LNTG),
      jnp.asarray(batch.answer_pos_NA), jnp.asarray(batch.answer_ids_NA),
      jnp.asarray(batch.answer_mask_NA))


def take_examples(cache: PrefixCache, index_B: jax.Array) -> PrefixCache:
  """Gather examples `index_B` of the cache (rows keep their leading layer axis)."""
  def take(name, value):
    if value is None:
      return None
    return value[:, index_B] if name == "rows_LNTG" else value[index_B]
  return PrefixCache(*(take(name, value) for name, value in zip(PrefixCache._fields, cache)))


def _at_positions(x_BTD: jax.Array, pos_BA: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x_BTD, pos_BA[..., None], axis=1)


def answer_logits(model: GPT, cache_B: PrefixCache, overrides: RowOverrides | None,
                  layer: int) -> jax.Array:
  """Resume at block `layer` with `overrides` there; return fp32 logits [B, A, V] at answer positions."""
  x_BTD, kept_BTD = model.run_blocks(
      cache_B.x_NTD, cache_B.x0_NTD, cache_B.ids_NT, cache_B.rows_LNTG, start=layer,
      kept_BTD=cache_B.kept_NTD, overrides=None if overrides is None else {layer: overrides})
  x_BAD = _at_positions(x_BTD, cache_B.answer_pos_NA)
  kept_BAD = _at_positions(kept_BTD, cache_B.answer_pos_NA)
  return model.logits(x_BAD, kept_BAD)


class SelectedLogits(NamedTuple):
  """Logits at a fixed number K of selected (example, answer slot) pairs."""
  logits_KV: jax.Array
  example_K: jax.Array  # int32 example index in the batch
  slot_K: jax.Array  # int32 answer slot
  valid_K: jax.Array  # bool, False for the fill beyond the selected pairs


def selected_answer_logits(model: GPT, cache_B: PrefixCache, overrides: RowOverrides | None,
                           layer: int, select_BA: jax.Array, budget: int) -> SelectedLogits:
  """Resume at block `layer` and compute logits only where `select_BA` is True.

  The lm_head costs V * D per position, so skipping answer slots that are
  padding or outside the loss matters at large vocabularies. `budget` must be
  at least the number of selected pairs; pairs beyond it would be dropped, so
  callers size it from the examples (the batch's largest possible count).
  """
  x_BTD, kept_BTD = model.run_blocks(
      cache_B.x_NTD, cache_B.x0_NTD, cache_B.ids_NT, cache_B.rows_LNTG, start=layer,
      kept_BTD=cache_B.kept_NTD, overrides=None if overrides is None else {layer: overrides})
  A = select_BA.shape[1]
  (flat_K,) = jnp.nonzero(select_BA.reshape(-1), size=budget, fill_value=0)
  valid_K = jnp.arange(budget) < jnp.sum(select_BA)
  example_K, slot_K = flat_K // A, flat_K % A
  position_K = cache_B.answer_pos_NA[example_K, slot_K]
  logits_1KV = model.logits(x_BTD[example_K, position_K][None], kept_BTD[example_K, position_K][None])
  return SelectedLogits(logits_1KV[0], example_K, slot_K, valid_K)


def _cached_answer_logits(graphdef, state, cache_B, overrides, layer):
  return answer_logits(nnx.merge(graphdef, state), cache_B, overrides, layer)


_cached_answer_logits_jit = jax.jit(_cached_answer_logits, static_argnums=(0, 4))


def cached_answer_logits(model: GPT, cache_B: PrefixCache, overrides: RowOverrides | None,
                         layer: int) -> jax.Array:
  """Run `answer_logits` compiled, for calls outside a jitted program."""
  graphdef, state = nnx.split(model)
  return _cached_answer_logits_jit(graphdef, state, cache_B, overrides, layer)


def _full_answer_logits(graphdef, state, ids_BT, rows_LBTG, answer_pos_BA, overrides, layer):
  model = nnx.merge(graphdef, state)
  logits_BTV = model(ids_BT, rows_LBTG, overrides=None if overrides is None else {layer: overrides})
  return _at_positions(logits_BTV, answer_pos_BA)


_full_answer_logits_jit = jax.jit(_full_answer_logits, static_argnums=(0, 6))


def full_answer_logits(model: GPT, batch: FactBatch, overrides: RowOverrides | None,
                       layer: int) -> jax.Array:
  """Run the whole forward pass (no cache) and return logits [B, A, V] at answer positions."""
  check_length(model, batch.ids_NT.shape[1])
  graphdef, state = nnx.split(model)
  return _full_answer_logits_jit(
      graphdef, state, jnp.asarray(batch.ids_NT), jnp.asarray(batch.rows_LNTG),
      jnp.asarray(batch.answer_pos_NA), overrides, layer)


def answer_nll(logits_BAV: jax.Array, answer_ids_BA: jax.Array) -> jax.Array:
  """Negative log-likelihood [B, A] of each answer token."""
  logp_BAV = jax.nn.log_softmax(logits_BAV, axis=-1)
  return -jnp.take_along_axis(logp_BAV, answer_ids_BA[..., None], axis=-1)[..., 0]


def answer_correct(logits_BAV: jax.Array, answer_ids_BA: jax.Array,
                   answer_mask_BA: jax.Array) -> jax.Array:
  """bool [B]: every answer token is the argmax under teacher forcing (greedy full-answer match)."""
  hit_BA = jnp.argmax(logits_BAV, axis=-1) == answer_ids_BA
  return jnp.all(hit_BA | ~answer_mask_BA, axis=-1)


def loss_mask(answer_mask_BA: jax.Array, loss_tokens: str) -> jax.Array:
  """Answer slots that enter the loss: all answer tokens, or the first one only."""
  if loss_tokens == "all":
    return answer_mask_BA
  if loss_tokens == "first":
    return answer_mask_BA & (jnp.arange(answer_mask_BA.shape[-1]) == 0)
  raise ValueError(f"loss_tokens={loss_tokens!r} is not supported; use 'all' or 'first'.")
