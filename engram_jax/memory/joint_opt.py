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
  (`forward.compute_prefix`). Each step runs blocks [target, L) and computes
  logits only for the answer tokens in the loss (`selected_answer_logits`),
  never for padding or prompt positions.
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
per epoch; Adam with a 5-step linear warmup to lr 4.0, then constant; early
stopping at recall 1.0 or after 25 checks without a new best recall; at most
1,500 steps. Adam moves each coordinate by about lr per step, so the step
count, not the batch, sets the pace; the larger batch mainly lets every row
get a gradient about every second step. Measured on the tiny config
pretrained for 400 steps (three generated users of 32-34 facts, batch 16,
2-core CPU), recall 0.9 took 40-60 steps at lr 4.0 and 70-120 at lr 2.0. At
lr 0.5 one user was at 0.77 after 200 steps, and the reference schedule
reached 0.85 after 1,500 steps.
NOTE: the schedule is not yet tuned on the d12/d20 reference sizes.
`JointOptSettings(reference_schedule=True)` reproduces the reference
schedule: batch 1 sampled with replacement, constant lr 0.5, exactly
`max_steps` steps, no early stopping, UNEMBED_P initial values.

Locality: a managed row is also read by every other n-gram that hashes to it
(with 5,000 rows per hash head a user's map is read at about a fifth of
validation positions). By default rows start at their pretrained values
(init="table") and an anchor term, anchor_weight * mean ||value -
pretrained||^2 / W, keeps each row close to them, so a fact is spread over
the rows that fire together at its trigger. On a tiny model with 5,000 rows
per head (five reference-format users, seed 0, order-3 continuation rows) the
anchor at 1e-4 moved train recall from 0.946 to 0.927 and cut Δbpb on
natural validation text from 2.3e-3 to 6.8e-4 and on persona text from
2.4e-2 to 9.7e-3; 1e-3 cut it to 1.4e-4 at recall 0.45. anchor="reads"
scales each row's pull by how often 262,144 train-split tokens read it: at
2e-4 it gave recall 0.867 with 4.1e-4 (natural) and 5.8e-3 (persona),
against 5.3e-4 and 6.7e-3 for the uniform anchor at the same recall. It
needs keep text, so the default stays "uniform".

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
from engram_jax.memory import keep as keep_lib
from engram_jax.memory import maps
from engram_jax.memory import writers
from engram_jax.model.gpt import GPT
from engram_jax.model.overrides import UNUSED_ROW

JointOptSettings = joint_loop.JointOptSettings


@dataclasses.dataclass(frozen=True)
class JointOptStats:
  """Statistics of one user's Joint OPT run.

  `seconds` is the wall time of the write without compilation: host
  preparation, the prefix pass, the compiled loop and the map. When several
  users train in one program, it is the time of the whole call, and
  `seconds_per_fact` divides it by all users' facts.
  """
  steps: int  # optimiser steps run
  best_step: int  # step of the values in the map (the last check with the best recall)
  final_loss: float  # mean loss-token cross-entropy over all examples with the map's values
  recall: float  # train-time greedy full-answer recall over all examples with the map's values
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
  anchor_RW: np.ndarray  # pretrained values of the rows
  anchor_scale_R: np.ndarray  # per-row anchor scale
  keep: keep_lib.KeepCache | None = None
  keep_hits: int = 0  # keep-text positions that read one of the rows


def managed_rows(model: GPT, examples: Sequence[facts_lib.FactExample], layout: HashLayout,
                 canonical_map: Any, layer: int, continuation_heads: Sequence[int] | None,
                 scale: float) -> tuple[np.ndarray, np.ndarray]:
  """Return the managed rows (int32 [R], ascending) and their initial values (float32 [R, W])."""
  by_token = writers.slices_by_token(
      examples, lambda t: writers.unembed_p_slices(model, layer, t, scale=scale))
  located = writers.locate_all(examples, layout, canonical_map, layer, continuation_heads)
  return writers.merge_mean(*writers.located_values(examples, located, by_token))


def _shapes(examples_per_user, settings) -> dict[str, int]:
  """Padded sizes shared by every user.

  Sizes are rounded up (lengths and answer slots to 8, examples to 8 or the
  evaluation chunk) so users of similar size reuse one compiled program.
  Minibatch slots beyond a user's real batch are computed but carry no loss.
  """
  max_examples = max(len(examples) for examples in examples_per_user)
  examples = [e for user in examples_per_user for e in user]
  chunk = min(settings.eval_batch, forward.round_up(max_examples, 8))
  num_examples = forward.round_up(max_examples, chunk)
  return {
      "num_examples": num_examples,
      "eval_chunk": chunk,
      "length": forward.round_up(max(len(e.sequence_ids) for e in examples), 8),
      "answer_slots": forward.round_up(max(len(e.answer_ids) for e in examples), 8),
      "slots": min(settings.batch_size, num_examples),
  }


def _token_budget(count: int, cap: int) -> int:
  return min(forward.round_up(max(count, 1), 8), cap)


def _sizes(users_examples, settings, shapes) -> joint_loop.Sizes:
  """Static loop sizes; the logits budgets are the largest token counts any user can reach.

  A minibatch drawn without replacement contains at most the user's
  min(batch, examples) longest answers; with replacement it may repeat the
  longest one. An evaluation chunk is a fixed run of consecutive examples.
  """
  slots, chunk, A = shapes["slots"], shapes["eval_chunk"], shapes["answer_slots"]
  train_tokens = eval_tokens = 1
  for examples in users_examples:
    lengths = [len(e.answer_ids) if settings.loss_tokens == "all" else 1 for e in examples]
    batch = min(settings.batch_size, len(examples))
    largest = sorted(lengths, reverse=True)[:batch]
    if settings.sampling == "replacement":
      largest = [max(lengths)] * batch
    train_tokens = max(train_tokens, sum(largest))
    answers = [len(e.answer_ids) for e in examples]
    eval_tokens = max([eval_tokens] + [sum(answers[i:i + chunk])
                                       for i in range(0, len(answers), chunk)])
  return joint_loop.Sizes(
      slots=slots, chunk=chunk,
      check_every=joint_loop.check_interval(settings, shapes["num_examples"], slots),
      train_tokens=_token_budget(train_tokens, slots * A),
      eval_tokens=_token_budget(eval_tokens, chunk * A))


def _row_slots(num_rows: int) -> int:
  """Managed-row slots: the next power of two, at least 1024, so small users share one program."""
  return max(1024, 1 << (max(num_rows, 1) - 1).bit_length())


def _prepare(model, examples, layout, canonical_map, layer, continuation_heads, settings,
             shapes, keep_text: keep_lib.KeepText | None) -> _UserData:
  rows_R, init_RW = managed_rows(
      model, examples, layout, canonical_map, layer, continuation_heads, settings.scale)
  anchor_RW = np.asarray(model.blocks[layer].engram.table[...][jnp.asarray(rows_R)], np.float32)
  if settings.init == "table":
    init_RW = anchor_RW
  scale_R = np.ones(rows_R.size, np.float32)
  if settings.anchor == "reads":
    reads_R = keep_lib.row_reads(keep_text, rows_R) + 1.0
    scale_R = (reads_R / reads_R.mean()).astype(np.float32)
  batch = forward.build_fact_batch(
      examples, layout, canonical_map, num_examples=shapes["num_examples"],
      length=shapes["length"], answer_slots=shapes["answer_slots"])
  if keep_text is None or settings.keep_weight == 0:
    return _UserData(batch, rows_R, init_RW, anchor_RW, scale_R)
  bos_id = examples[0].prompt_ids[0]
  cache, hits = keep_lib.build_cache(model, keep_text, rows_R, layout, canonical_map, layer,
                                     settings.keep, bos_id)
  return _UserData(batch, rows_R, init_RW, anchor_RW, scale_R, cache, hits)


def _keep_text(keep_text, settings, layout, canonical_map, layer) -> keep_lib.KeepText | None:
  """Hash raw keep text once for all users; None when no term reads it."""
  if settings.keep_weight == 0 and settings.anchor != "reads":
    return None
  if keep_text is None:
    raise ValueError(
        f"keep_weight={settings.keep_weight} with anchor={settings.anchor!r} needs keep text: pass "
        "keep_text (for example engram_jax.memory.keep.train_text(data_dir, tokens)), or set "
        "keep_weight=0 and anchor='uniform'.")
  if isinstance(keep_text, keep_lib.KeepText):
    return keep_text
  return keep_lib.keep_text(keep_text, layout, canonical_map, layer)


def _padded_rows(data: _UserData, num_rows: int) -> tuple[np.ndarray, ...]:
  rows_R = np.full(num_rows, UNUSED_ROW, np.int32)
  init_RW = np.zeros((num_rows, data.init_RW.shape[1]), np.float32)
  anchor_RW = np.zeros_like(init_RW)
  scale_R = np.zeros(num_rows, np.float32)
  rows_R[:data.rows_R.size] = data.rows_R
  init_RW[:data.rows_R.size] = data.init_RW
  anchor_RW[:data.rows_R.size] = data.anchor_RW
  scale_R[:data.rows_R.size] = data.anchor_scale_R
  return rows_R, init_RW, anchor_RW, scale_R


def _problem(model, data: _UserData, num_examples: int, num_rows: int, layer: int):
  rows_R, init_RW, anchor_RW, scale_R = _padded_rows(data, num_rows)
  return joint_loop.Problem(
      cache=forward.compute_prefix(model, data.batch, layer),
      example_mask_N=jnp.asarray(data.batch.example_mask_N),
      num_examples=jnp.asarray(num_examples, jnp.int32),
      rows_R=jnp.asarray(rows_R), init_RW=jnp.asarray(init_RW), anchor_RW=jnp.asarray(anchor_RW),
      anchor_scale_R=jnp.asarray(scale_R), keep=data.keep)


def _check_examples(users_examples) -> None:
  if not users_examples:
    raise ValueError("No users were given; pass one list of FactExamples per user.")
  for i, examples in enumerate(users_examples):
    if not examples:
      raise ValueError(f"User index {i} has no fact examples; drop the user or add facts.")
    writers.map_owner(examples)


def _write(model, users_examples, layout, canonical_map, *, model_fingerprint, settings, layer,
           continuation_heads, keep_text, vmapped: bool
           ) -> list[tuple[maps.OverrideMap, JointOptStats]]:
  """Train every user of `users_examples` in one compiled program (vmapped over users or not)."""
  start = time.perf_counter()
  layer = writers.target_layer(model, layer)
  effective = settings.effective()
  shapes = _shapes(users_examples, effective)
  forward.check_length(model, shapes["length"])
  keep_text = _keep_text(keep_text, effective, layout, canonical_map, layer)
  datas = [_prepare(model, examples, layout, canonical_map, layer, continuation_heads,
                    effective, shapes, keep_text) for examples in users_examples]
  num_rows = _row_slots(max(d.rows_R.size for d in datas))
  problems = [_problem(model, d, len(examples), num_rows, layer)
              for d, examples in zip(datas, users_examples)]
  graphdef, state = nnx.split(model)
  if vmapped:
    problem = jax.tree.map(lambda *parts: jnp.stack(parts), *problems)
  else:
    problem, = problems
  outcome, compile_seconds = joint_loop.run_compiled(
      graphdef, state, problem, effective, layer, _sizes(users_examples, effective, shapes),
      users=len(problems) if vmapped else None)
  outcome = jax.tree.map(np.asarray, outcome)
  results = []
  for u, (data, examples) in enumerate(zip(datas, users_examples)):
    user_outcome = jax.tree.map(lambda a, u=u: a[u], outcome) if vmapped else outcome
    results.append(_finish(examples, data, user_outcome, layer, continuation_heads, effective,
                           model_fingerprint))

  seconds = time.perf_counter() - start - compile_seconds
  total_facts = sum(stats.num_facts for _, stats in results)
  return [(m, dataclasses.replace(stats, seconds=seconds, seconds_per_fact=seconds / total_facts,
                                  compile_seconds=compile_seconds)) for m, stats in results]


def write_joint_opt_users(
    model: GPT, users_examples: Sequence[Sequence[facts_lib.FactExample]], layout: HashLayout,
    canonical_map: Any, *, model_fingerprint: str, settings: JointOptSettings = JointOptSettings(),
    layer: int | None = None, continuation_heads: Sequence[int] | None = None,
    batched: bool = True, users_per_program: int | None = None,
    keep_text: np.ndarray | keep_lib.KeepText | None = None
    ) -> list[tuple[maps.OverrideMap, JointOptStats]]:
  """Train one Joint OPT map per user, in user order.

  With `batched`, users train together in compiled programs of at most
  `users_per_program` users (None: all at once), which bounds device memory.
  Without it, each user trains alone. `keep_text` (raw token ids of natural
  text, or a hashed KeepText) feeds the keep term when settings.keep_weight > 0.
  """
  _check_examples(users_examples)
  if users_per_program is not None and users_per_program < 1:
    raise ValueError(f"users_per_program={users_per_program} must be positive or None.")
  keep_text = _keep_text(keep_text, settings.effective(), layout, canonical_map,
                         writers.target_layer(model, layer))
  kwargs = dict(model_fingerprint=model_fingerprint, settings=settings, layer=layer,
                continuation_heads=continuation_heads, keep_text=keep_text)
  if not batched:
    return [_write(model, [examples], layout, canonical_map, vmapped=False, **kwargs)[0]
            for examples in users_examples]
  group = users_per_program or len(users_examples)
  results = []
  for start in range(0, len(users_examples), group):
    results += _write(model, list(users_examples[start:start + group]), layout, canonical_map,
                      vmapped=True, **kwargs)
  return results


def write_joint_opt(model: GPT, examples: Sequence[facts_lib.FactExample], layout: HashLayout,
                    canonical_map: Any, *, model_fingerprint: str,
                    settings: JointOptSettings = JointOptSettings(), layer: int | None = None,
                    continuation_heads: Sequence[int] | None = None,
                    keep_text: np.ndarray | keep_lib.KeepText | None = None
                    ) -> tuple[maps.OverrideMap, JointOptStats]:
  """Train one user's facts into one override map; return it with the run's stats."""
  _check_examples([examples])
  return _write(model, [examples], layout, canonical_map, model_fingerprint=model_fingerprint,
                settings=settings, layer=layer, continuation_heads=continuation_heads,
                keep_text=keep_text, vmapped=False)[0]


def _finish(examples, data: _UserData, outcome: joint_loop.Outcome, layer, continuation_heads,
            settings, model_fingerprint) -> tuple[maps.OverrideMap, JointOptStats]:
  num_rows = data.rows_R.size
  heads = None if continuation_heads is None else list(continuation_heads)
  record = dict(dataclasses.asdict(settings), continuation_heads=heads,
                num_examples=len(examples), keep_hits=data.keep_hits)
  result = maps.make_map(
      layer, data.rows_R, outcome.values_RW[:num_rows], owner=writers.map_owner(examples),
      fact_keys=writers.fact_keys(examples), strategy="joint_opt", settings=record,
      model_fingerprint=model_fingerprint)
  stats = JointOptStats(
      steps=int(outcome.steps), best_step=int(outcome.best_step),
      final_loss=float(outcome.loss), recall=float(outcome.recall),
      seconds=0.0, seconds_per_fact=0.0, compile_seconds=0.0,
      num_facts=len(writers.fact_keys(examples)), num_examples=len(examples), num_rows=num_rows)
  logging.info("[memory] Joint OPT %s: %d facts, %d rows, %d steps, recall %.3f, loss %.3f",
               result.owner, stats.num_facts, num_rows, stats.steps, stats.recall,
               stats.final_loss)
  return result, stats
