"""The compiled Joint OPT training loop: settings, minibatch sampling, steps and early stop.

`train_user` is a pure function of the frozen model state and one user's
`Problem`. `run_compiled` compiles it, vmapped over users when asked, caches
the executable and runs it. engram_jax.memory.joint_opt prepares the inputs
and builds the override maps.

Shape letters: N examples, S minibatch slots, R managed rows, W row width,
A answer slots, C evaluation chunk, U users.
"""

import dataclasses
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx

from engram_jax.memory import forward
from engram_jax.memory import keep as keep_lib
from engram_jax.model.overrides import UNUSED_ROW, RowOverrides

SCHEDULES = ("constant", "cosine")
SAMPLINGS = ("epoch", "replacement")
INITS = ("unembed_p", "table")
ANCHORS = ("uniform", "reads")
# Compiled programs kept by `run_compiled`, one per shape signature and settings.
_CACHE_SIZE = 16
_compiled: dict[Any, Any] = {}


@dataclasses.dataclass(frozen=True)
class JointOptSettings:
  """Joint OPT hyperparameters (Adam betas 0.9/0.999, eps 1e-8, no clipping).

  Early stopping: every `check_every` steps the recall of all examples is
  measured. The run stops once recall reaches `target_recall` or at
  `max_steps`. It also stops after `patience` checks in a row without a new
  best recall, counted once recall is above zero, because facts whose trigger
  rows coincide (such as "Willa was born in" and "Emil was born in") can keep
  recall below 1.0 for good. The returned values are those of the last check
  with the best recall.
  """
  learning_rate: float = 4.0  # peak lr (the reference's batch-1 schedule uses 0.5)
  schedule: str = "constant"  # "constant", or "cosine" decay from warmup to max_steps
  warmup_steps: int = 5  # linear warmup from learning_rate / warmup_steps
  final_lr_fraction: float = 0.1  # cosine only: final lr / peak lr
  batch_size: int = 16  # examples per step (fewer when the user has fewer)
  sampling: str = "epoch"  # "epoch": without replacement per epoch; "replacement"
  max_steps: int = 1500
  early_stop: bool = True
  check_every: int | None = None  # steps between recall checks; None: max(4, steps per epoch)
  target_recall: float = 1.0  # stop once this fraction of examples is fully greedy-correct
  patience: int | None = 25  # checks without a new best recall before stopping; None: never
  loss_tokens: str = "all"  # "all" answer tokens, or "first" (the reference's loss)
  scale: float = 20.0  # UNEMBED_P scale of the initial values
  seed: int = 0  # minibatch sampling
  eval_batch: int = 64  # examples per chunk of the recall check
  reference_schedule: bool = False  # see `effective`
  # Keep term (engram_jax.memory.keep): loss += keep_weight * KL on natural-text windows where
  # the user's rows are read. It needs keep text passed to the writer; 0 disables it.
  keep_weight: float = 0.0
  # "unembed_p": rows start at the mean UNEMBED_P slice, as in the reference. "table": rows start
  # at their pretrained values, so other n-grams that read a row see its content at first.
  init: str = "table"
  # loss += anchor_weight * mean over managed rows of s_r * ||value - pretrained value||^2 / W,
  # which favours spreading a fact over the rows that fire together and keeps each row near
  # its pretrained value for the n-grams that share it; 0 disables it. With anchor="uniform"
  # s_r = 1. With anchor="reads" s_r is proportional to 1 + the row's reads in the keep text
  # (mean 1 over the user's rows), so rows that other text reads often move least.
  anchor_weight: float = 1e-4
  anchor: str = "uniform"
  keep_batch: int = 16  # keep windows per step
  keep: keep_lib.KeepSettings = keep_lib.KeepSettings()

  def __post_init__(self):
    if self.schedule not in SCHEDULES or self.sampling not in SAMPLINGS:
      raise ValueError(f"schedule={self.schedule!r} must be one of {SCHEDULES} and "
                       f"sampling={self.sampling!r} one of {SAMPLINGS}.")
    if self.loss_tokens not in ("all", "first"):
      raise ValueError(f"loss_tokens={self.loss_tokens!r} is not supported; use 'all' or 'first'.")
    for name in ("keep_weight", "anchor_weight", "learning_rate"):
      value = getattr(self, name)
      if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value} is invalid; pass a finite number >= 0 "
                         "(0 disables a weight's term).")
    if self.anchor not in ANCHORS:
      raise ValueError(f"anchor={self.anchor!r} is not supported; use one of {ANCHORS}.")
    if self.init not in INITS:
      raise ValueError(f"init={self.init!r} is not supported; use one of {INITS}.")
    positive = {"learning_rate": self.learning_rate, "batch_size": self.batch_size,
                "keep_batch": self.keep_batch,
                "eval_batch": self.eval_batch, "check_every": self.check_every or 1,
                "patience": self.patience or 1}
    bad = {name: value for name, value in positive.items() if value <= 0}
    if bad or self.max_steps < 0 or self.warmup_steps < 0 or not 0 < self.target_recall <= 1:
      raise ValueError(
          f"Invalid JointOptSettings ({bad or self}): learning_rate, batch_size, eval_batch, "
          "check_every and patience must be positive, max_steps and warmup_steps non-negative, "
          "and target_recall in (0, 1].")

  def effective(self) -> "JointOptSettings":
    """Return the settings a run uses, which differ only with `reference_schedule`.

    The reference schedule is batch 1 sampled with replacement, Adam at a
    constant lr 0.5 and exactly `max_steps` steps without early stopping,
    from UNEMBED_P values with no anchor or keep term. Other fields are kept.
    """
    if not self.reference_schedule:
      return self
    return dataclasses.replace(
        self, learning_rate=0.5, schedule="constant", warmup_steps=0, batch_size=1,
        sampling="replacement", early_stop=False, init="unembed_p", anchor_weight=0.0,
        keep_weight=0.0)


class Problem(NamedTuple):
  """One user's device inputs; several users stack along a leading axis."""
  cache: forward.PrefixCache  # [N, ...] examples, padded
  example_mask_N: jax.Array  # bool, real examples
  num_examples: jax.Array  # int32 scalar, real examples
  rows_R: jax.Array  # int32 managed rows, ascending, UNUSED_ROW padding
  init_RW: jax.Array  # float32 initial values (0 in padding)
  anchor_RW: jax.Array | None = None  # float32 pretrained values of the rows (0 in padding)
  anchor_scale_R: jax.Array | None = None  # float32 per-row anchor scale s_r (0 in padding)
  keep: keep_lib.KeepCache | None = None  # keep windows, None without a keep term


class Outcome(NamedTuple):
  """Trained values and where they came from (the best check with early stopping)."""
  values_RW: jax.Array
  steps: jax.Array  # optimiser steps run
  best_step: jax.Array  # step of the returned values
  recall: jax.Array  # fraction of real examples fully greedy-correct with the returned values
  loss: jax.Array  # their mean loss-token cross-entropy over all real examples
  stale: jax.Array  # checks since the last new best recall (0 without early stopping)


def learning_rate_schedule(settings: JointOptSettings) -> optax.Schedule:
  lr, warmup = settings.learning_rate, settings.warmup_steps
  if settings.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=lr / max(warmup, 1), peak_value=lr, warmup_steps=warmup,
        decay_steps=max(settings.max_steps, warmup + 1), end_value=lr * settings.final_lr_fraction)
  if warmup == 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules(
      [optax.linear_schedule(lr / warmup, lr, warmup), optax.constant_schedule(lr)], [warmup])


def check_interval(settings: JointOptSettings, num_examples: int, slots: int) -> int:
  """Steps between recall checks: the setting, or max(4, steps per epoch)."""
  if settings.check_every is not None:
    return settings.check_every
  return max(4, math.ceil(num_examples / slots))


def _epoch_order(key, epoch, n, N: int) -> jax.Array:
  """Return a permutation of [0, n) for `epoch`, followed by the padding indices [n, N).

  Each index draws its own uniform from (key, epoch, index), so the order of
  the real examples does not depend on the padding N.
  """
  epoch_key = jax.random.fold_in(key, epoch)
  index_N = jnp.arange(N)
  u_N = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(epoch_key, i)))(index_N)
  return jnp.argsort(jnp.where(index_N < n, u_N, 2.0))


def sample_batch(key, step, n, b, slots: int, N: int, sampling: str):
  """Return example indices [S] and their validity [S] for `step`; b <= slots examples are real.

  "epoch" walks through one random permutation of the n examples per epoch,
  b examples per step, so every example is seen once per epoch.
  "replacement" draws b examples uniformly and independently.
  """
  slot_S = jnp.arange(slots)
  valid_S = slot_S < b
  if sampling == "replacement":
    step_key = jax.random.fold_in(key, step)
    index_S = jax.vmap(lambda j: jax.random.randint(jax.random.fold_in(step_key, j), (), 0, n))(slot_S)
  else:
    position_S = step * b + slot_S
    first_epoch = (step * b) // n
    order0_N = _epoch_order(key, first_epoch, n, N)
    order1_N = _epoch_order(key, first_epoch + 1, n, N)
    in_first_S = position_S // n == first_epoch
    index_S = jnp.where(in_first_S, order0_N[position_S % n], order1_N[position_S % n])
  return jnp.where(valid_S, index_S, 0), valid_S


def _overrides(rows_R, values_RW, batch: int) -> RowOverrides:
  """Give every sequence of the batch the whole map."""
  R, W = values_RW.shape
  return RowOverrides(jnp.broadcast_to(rows_R, (batch, R)),
                      jnp.broadcast_to(values_RW, (batch, R, W)))


class Sizes(NamedTuple):
  """Static sizes of the compiled program, shared by every user it trains."""
  slots: int  # minibatch slots S
  chunk: int  # examples per evaluation chunk C
  check_every: int  # steps between recall checks
  train_tokens: int  # logits budget of a minibatch (its largest possible loss-token count)
  eval_tokens: int  # logits budget of an evaluation chunk (its answer-token count)


def _answer_terms(model, problem, values_RW, index_B, weight_B, settings, layer, budget: int,
                  all_tokens: bool):
  """Return the summed NLL, the loss-token count and the fully correct real examples of a batch.

  Logits are computed for the loss tokens only, or for every answer token when
  `all_tokens` (needed to count fully correct examples).
  """
  cache_B = forward.take_examples(problem.cache, index_B)
  loss_BA = forward.loss_mask(cache_B.answer_mask_NA, settings.loss_tokens) & weight_B[:, None]
  select_BA = cache_B.answer_mask_NA & weight_B[:, None] if all_tokens else loss_BA
  selected = forward.selected_answer_logits(
      model, cache_B, _overrides(problem.rows_R, values_RW, index_B.shape[0]), layer, select_BA,
      budget)
  b_K, a_K = selected.example_K, selected.slot_K
  ids_K = cache_B.answer_ids_NA[b_K, a_K]
  nll_K = forward.answer_nll(selected.logits_KV, ids_K)
  in_loss_K = selected.valid_K & loss_BA[b_K, a_K]
  miss_K = selected.valid_K & (jnp.argmax(selected.logits_KV, axis=-1) != ids_K)
  wrong_B = jnp.zeros(index_B.shape, bool).at[b_K].max(miss_K)
  return jnp.sum(nll_K * in_loss_K), jnp.sum(in_loss_K), jnp.sum(~wrong_B & weight_B)


def _evaluate(model, problem, values_RW, settings, layer, sizes: Sizes):
  """Return recall and mean loss over all real examples, `sizes.chunk` examples at a time."""
  N = problem.example_mask_N.shape[0]
  index_KC = jnp.arange(N).reshape(N // sizes.chunk, sizes.chunk)

  def one_chunk(index_C):
    return _answer_terms(model, problem, values_RW, index_C, problem.example_mask_N[index_C],
                         settings, layer, sizes.eval_tokens, all_tokens=True)

  nll_K, count_K, correct_K = jax.lax.map(one_chunk, index_KC)
  recall = jnp.sum(correct_K) / problem.num_examples
  return recall, jnp.sum(nll_K) / jnp.maximum(jnp.sum(count_K), 1)


def _track(previous: Outcome, steps, values_RW, recall, loss) -> Outcome:
  """Keep the values of the latest check with the best recall and count checks without a new best.

  Checks count only once recall is above zero, so a slow start is not taken for a plateau.
  """
  keep_new = recall >= previous.recall
  improved = (recall > previous.recall + 1e-6) | (recall <= 0)
  return Outcome(
      values_RW=jnp.where(keep_new, values_RW, previous.values_RW), steps=steps,
      best_step=jnp.where(keep_new, steps, previous.best_step),
      recall=jnp.maximum(recall, previous.recall), loss=jnp.where(keep_new, loss, previous.loss),
      stale=jnp.where(improved, 0, previous.stale + 1))


def _running(settings: JointOptSettings, outcome: Outcome) -> jax.Array:
  running = (outcome.steps < settings.max_steps) & (outcome.recall < settings.target_recall - 1e-6)
  if settings.patience is not None:
    running &= outcome.stale < settings.patience
  return running


def train_user(graphdef, state, problem: Problem, settings: JointOptSettings, layer: int,
               sizes: Sizes) -> Outcome:
  """Train one user's managed rows; pure and compiled as a whole."""
  model = nnx.merge(graphdef, state)
  tx = optax.adam(learning_rate_schedule(settings))
  key = jax.random.key(settings.seed)
  n = problem.num_examples
  b = jnp.minimum(settings.batch_size, n)
  N = problem.example_mask_N.shape[0]

  keep_key = jax.random.fold_in(jax.random.key(settings.seed), 0x7FFFFFFF)  # apart from epoch keys

  def batch_loss(values_RW, index_S, valid_S, step):
    nll, count, _ = _answer_terms(model, problem, values_RW, index_S, valid_S, settings, layer,
                                  sizes.train_tokens, all_tokens=False)
    loss = nll / jnp.maximum(count, 1)
    if settings.anchor_weight > 0:
      real_R = problem.rows_R != UNUSED_ROW
      squares_R = jnp.sum(jnp.square(values_RW - problem.anchor_RW), axis=-1)
      loss += settings.anchor_weight * jnp.sum(squares_R * problem.anchor_scale_R) / (
          jnp.maximum(jnp.sum(real_R), 1) * values_RW.shape[-1])
    if problem.keep is None or settings.keep_weight == 0:
      return loss
    windows = problem.keep.ids_MT.shape[0]
    index_K = jax.random.randint(jax.random.fold_in(keep_key, step), (settings.keep_batch,), 0,
                                 windows)
    overrides = _overrides(problem.rows_R, values_RW, settings.keep_batch)
    return loss + settings.keep_weight * keep_lib.keep_loss(
        model, problem.keep, index_K, overrides, layer, settings.keep.before)

  def one_step(carry):
    step, values_RW, opt_state = carry
    index_S, valid_S = sample_batch(key, step, n, b, sizes.slots, N, settings.sampling)
    grads_RW = jax.grad(batch_loss)(values_RW, index_S, valid_S, step)
    updates, opt_state = tx.update(grads_RW, opt_state, values_RW)
    return step + 1, optax.apply_updates(values_RW, updates), opt_state

  evaluate = lambda v: _evaluate(model, problem, v, settings, layer, sizes)
  carry = (jnp.zeros((), jnp.int32), problem.init_RW, tx.init(problem.init_RW))
  if not settings.early_stop:
    carry = jax.lax.fori_loop(0, settings.max_steps, lambda _, c: one_step(c), carry)
    recall, loss = evaluate(carry[1])
    return Outcome(carry[1], carry[0], carry[0], recall, loss, jnp.zeros((), jnp.int32))

  def guarded_step(_, c):
    # The last block may pass max_steps; steps beyond it leave the state as it is.
    return jax.tree.map(lambda new, old: jnp.where(c[0] < settings.max_steps, new, old),
                        one_step(c), c)

  def block(loop):
    c, outcome = loop
    c = jax.lax.fori_loop(0, sizes.check_every, guarded_step, c)
    return c, _track(outcome, c[0], c[1], *evaluate(c[1]))

  zero = jnp.zeros((), jnp.int32)
  start = Outcome(problem.init_RW, zero, zero, *evaluate(problem.init_RW), zero)
  _, outcome = jax.lax.while_loop(lambda loop: _running(settings, loop[1]), block, (carry, start))
  return outcome


def _signature(tree) -> tuple:
  leaves, structure = jax.tree.flatten(tree)
  return structure, tuple((leaf.shape, str(leaf.dtype)) for leaf in leaves)


def run_compiled(graphdef, state, problem: Problem, settings: JointOptSettings, layer: int,
                 sizes: Sizes, *, users: int | None = None) -> tuple[Outcome, float]:
  """Compile (or reuse) and run the training program; return its outcome and compile seconds.

  With `users`, `problem` contains that many users stacked on axis 0 and the
  program vmaps `train_user` over them.
  """
  key = (graphdef, settings, layer, sizes, users,
         _signature(state), _signature(problem))
  compile_seconds = 0.0
  if key not in _compiled:
    start = time.perf_counter()
    train = lambda s, p: train_user(graphdef, s, p, settings, layer, sizes)
    program = jax.jit(train if users is None else jax.vmap(train, in_axes=(None, 0)))
    if len(_compiled) >= _CACHE_SIZE:
      _compiled.pop(next(iter(_compiled)))
    _compiled[key] = program.lower(state, problem).compile()
    compile_seconds = time.perf_counter() - start
    logging.info("[memory] compiled Joint OPT for %s users in %.1fs", users or 1, compile_seconds)
  outcome = _compiled[key](state, problem)
  return jax.block_until_ready(outcome), compile_seconds
