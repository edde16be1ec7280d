"""Joint OPT: all of a user's facts trained together into one override map.

Managed rows are the distinct union of the rows every example locates
(`facts.locate_rows`: trigger rows plus continuation rows). Each managed row
has one trainable [W] value, initialised to the mean of the UNEMBED_P slices
of the (example, position, head) triples that read it. Each slice comes from
the unembedding of the token that position predicts. In every forward pass
each sequence carries the whole map as RowOverrides, so a managed row is
replaced wherever it is looked up, as it will be when the map is served.

Properties:
* The model is frozen: its parameters are inputs of the compiled program and
  are never updated; the shared table is never written. Gradients reach only
  the [R, W] values.
* The stream entering the target block is computed once for all examples
  (`forward.compute_prefix`). Each step runs blocks [target, L) and the
  logits at answer positions only.
* Loss: mean cross-entropy over all answer tokens (teacher forcing) of a
  minibatch, so multi-token answers are trained; `loss_tokens="first"` keeps
  the reference's first-token loss.
* The whole loop is one compiled `lax.while_loop` without host syncs. Every
  `check_every` steps it measures, on all examples, the fraction whose every
  answer token is the argmax under teacher forcing, and it stops once that
  fraction reaches `target_recall`.
* Multi-trigger examples of one fact share its answer. Their rows are
  managed as separate (untied) rows, like the reference's copies; a row that
  two phrasings or facts share is one trainable row, trained by both.
* `write_joint_opt_users` trains several users in one program (vmap over
  users, padded examples and rows); each user's result equals training that
  user alone with the same settings, up to float rounding.

Default schedule: minibatches of min(16, examples) drawn without replacement
per epoch, Adam at a constant lr 0.5 (as the reference), early stopping at
recall 1.0 and at most 1,500 steps. With batches of 16 the gradient is less
noisy than the reference's batch of 1, so the reference's step size needs no
decay. `JointOptSettings(reference_schedule=True)` reproduces the reference
schedule: batch 1 sampled with replacement, constant lr 0.5, exactly
`max_steps` steps, no early stopping.

Shape letters: U users, N examples, S minibatch slots, R managed rows,
W row width, C evaluation chunk.
"""

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from engram_jax.hashing import HashLayout
from engram_jax.memory import facts as facts_lib
from engram_jax.memory import forward
from engram_jax.memory import joint_loop
from engram_jax.memory import maps
from engram_jax.memory import writers
from engram_jax.model.gpt import GPT
from engram_jax.model.overrides import UNUSED_ROW

JointOptSettings = joint_loop.JointOptSettings


@dataclasses.dataclass(frozen=True)
class JointOptStats:
  """What one user's Joint OPT run did.

  `seconds` is the wall time of the write without compilation (host
  preparation, the prefix pass, the compiled loop and the map); with several
  users trained in one program it is the shared time of the whole call.
  """
  steps: int
  final_loss: float  # mean answer-token cross-entropy over all examples after training
  recall: float  # train-time greedy full-answer recall over all examples
  seconds: float
  seconds_per_fact: float
  compile_seconds: float
  num_facts: int
  num_examples: int
  num_rows: int


class _UserData(NamedTuple):
  """Host-side inputs of one user: examples batch, managed rows and initial values."""
  batch: forward.FactBatch
  rows_R: np.ndarray
  init_RW: np.ndarray


def _managed_rows(model, examples, layout, canonical_map, layer, continuation_heads, scale):
  by_token = writers.slices_by_token(
      examples, lambda t: writers.unembed_p_slices(model, layer, t, scale=scale))
  located = writers.locate_all(examples, layout, canonical_map, layer, continuation_heads)
  return writers.merge_mean(*writers.located_values(examples, located, by_token))


def _shapes(examples_per_user, settings) -> dict[str, int]:
  """Padded sizes shared by every user, rounded so nearby sizes reuse one compiled program."""
  most = max(len(examples) for examples in examples_per_user)
  examples = [e for user in examples_per_user for e in user]
  chunk = min(settings.eval_batch, forward.round_up(most, 8))
  return {
      "num_examples": forward.round_up(most, chunk),
      "eval_chunk": chunk,
      "length": forward.round_up(max(len(e.sequence_ids) for e in examples), 8),
      "answer_slots": forward.round_up(max(len(e.answer_ids) for e in examples), 4),
      "slots": min(settings.batch_size, most),
  }


def _prepare(model, examples, layout, canonical_map, layer, continuation_heads, settings,
             shapes) -> _UserData:
  rows_R, init_RW = _managed_rows(
      model, examples, layout, canonical_map, layer, continuation_heads, settings.scale)
  batch = forward.build_fact_batch(
      examples, layout, canonical_map, num_examples=shapes["num_examples"],
      length=shapes["length"], answer_slots=shapes["answer_slots"])
  return _UserData(batch, rows_R, init_RW)


def _padded_rows(data: _UserData, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
  rows_R = np.full(num_rows, UNUSED_ROW, np.int32)
  init_RW = np.zeros((num_rows, data.init_RW.shape[1]), np.float32)
  rows_R[:data.rows_R.size] = data.rows_R
  init_RW[:data.rows_R.size] = data.init_RW
  return rows_R, init_RW


def _problem(model, data: _UserData, num_examples: int, num_rows: int, layer: int):
  rows_R, init_RW = _padded_rows(data, num_rows)
  return joint_loop.Problem(
      cache=forward.compute_prefix(model, data.batch, layer),
      example_mask_N=jnp.asarray(data.batch.example_mask_N),
      num_examples=jnp.asarray(num_examples, jnp.int32),
      rows_R=jnp.asarray(rows_R), init_RW=jnp.asarray(init_RW))


def _check_examples(users_examples) -> None:
  if not users_examples:
    raise ValueError("No users were given; pass one list of FactExamples per user.")
  for i, examples in enumerate(users_examples):
    if not examples:
      raise ValueError(f"User index {i} has no fact examples; drop the user or add facts.")
    writers.map_owner(examples)


def write_joint_opt_users(
    model: GPT, users_examples: Sequence[Sequence[facts_lib.FactExample]], layout: HashLayout,
    canonical_map: Any, *, model_fingerprint: str, settings: JointOptSettings = JointOptSettings(),
    layer: int | None = None, continuation_heads: Sequence[int] | None = None,
    batched: bool = True) -> list[tuple[maps.OverrideMap, JointOptStats]]:
  """Train one Joint OPT map per user; with `batched`, all users in one compiled program."""
  _check_examples(users_examples)
  if not batched:
    return [write_joint_opt(model, examples, layout, canonical_map,
                            model_fingerprint=model_fingerprint, settings=settings, layer=layer,
                            continuation_heads=continuation_heads)
            for examples in users_examples]
  start = time.perf_counter()
  layer = writers.target_layer(model, layer)
  effective = settings.effective()
  shapes = _shapes(users_examples, effective)
  forward.check_length(model, shapes["length"])
  datas = [_prepare(model, examples, layout, canonical_map, layer, continuation_heads,
                    effective, shapes) for examples in users_examples]
  num_rows = forward.round_up(max(d.rows_R.size for d in datas), 64)
  problems = [_problem(model, d, len(ex), num_rows, layer)
              for d, ex in zip(datas, users_examples)]
  stacked = jax.tree.map(lambda *parts: jnp.stack(parts), *problems)
  graphdef, state = nnx.split(model)
  outcome, compile_seconds = joint_loop.run_compiled(
      graphdef, state, stacked, effective, layer, shapes["slots"], shapes["eval_chunk"],
      users=len(problems))
  outcome = jax.tree.map(np.asarray, outcome)
  compile_start = start + compile_seconds
  results = []
  for u, (data, examples) in enumerate(zip(datas, users_examples)):
    results.append(_finish(
        examples, data, jax.tree.map(lambda a, u=u: a[u], outcome), layer, continuation_heads,
        effective, model_fingerprint))
  seconds = time.perf_counter() - compile_start
  total_facts = sum(len(writers.fact_keys(ex)) for ex in users_examples)
  return [(m, dataclasses.replace(
      stats, seconds=seconds, seconds_per_fact=seconds / total_facts,
      compile_seconds=compile_seconds)) for m, stats in results]


def write_joint_opt(model: GPT, examples: Sequence[facts_lib.FactExample], layout: HashLayout,
                    canonical_map: Any, *, model_fingerprint: str,
                    settings: JointOptSettings = JointOptSettings(), layer: int | None = None,
                    continuation_heads: Sequence[int] | None = None
                    ) -> tuple[maps.OverrideMap, JointOptStats]:
  """Train one user's facts into one override map; return it with the run's stats."""
  _check_examples([examples])
  start = time.perf_counter()
  layer = writers.target_layer(model, layer)
  effective = settings.effective()
  shapes = _shapes([examples], effective)
  forward.check_length(model, shapes["length"])
  data = _prepare(model, examples, layout, canonical_map, layer, continuation_heads, effective,
                  shapes)
  problem = _problem(model, data, len(examples), forward.round_up(data.rows_R.size, 64), layer)
  graphdef, state = nnx.split(model)
  outcome, compile_seconds = joint_loop.run_compiled(
      graphdef, state, problem, effective, layer, shapes["slots"], shapes["eval_chunk"])
  result, stats = _finish(examples, data, jax.tree.map(np.asarray, outcome), layer,
                          continuation_heads, effective, model_fingerprint)
  seconds = time.perf_counter() - start - compile_seconds
  return result, dataclasses.replace(
      stats, seconds=seconds, seconds_per_fact=seconds / stats.num_facts,
      compile_seconds=compile_seconds)


def _finish(examples, data: _UserData, outcome: joint_loop.Outcome, layer, continuation_heads,
            settings, model_fingerprint) -> tuple[maps.OverrideMap, JointOptStats]:
  num_rows = data.rows_R.size
  record = dict(dataclasses.asdict(settings), continuation_heads=(
      None if continuation_heads is None else list(continuation_heads)),
                num_examples=len(examples))
  result = maps.make_map(
      layer, data.rows_R, outcome.values_RW[:num_rows], owner=writers.map_owner(examples),
      fact_keys=writers.fact_keys(examples), strategy="joint_opt", settings=record,
      model_fingerprint=model_fingerprint)
  stats = JointOptStats(
      steps=int(outcome.steps), final_loss=float(outcome.loss), recall=float(outcome.recall),
      seconds=0.0, seconds_per_fact=0.0, compile_seconds=0.0,
      num_facts=len(writers.fact_keys(examples)), num_examples=len(examples), num_rows=num_rows)
  logging.info("[memory] Joint OPT %s: %d facts, %d rows, %d steps, recall %.3f, loss %.3f",
               result.owner, stats.num_facts, num_rows, stats.steps, stats.recall,
               stats.final_loss)
  return result, stats
