"""The pretraining loop: data, state, compiled step, evaluation, checkpoints.

`train(cfg, workdir)` runs on every process of a multi-controller job; each
process feeds its slice of the global batch and only process 0 writes logs
and metrics. Re-running with the same workdir resumes from the newest
committed checkpoint, data position included.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
from absl import logging

from engram_jax import config as config_lib
from engram_jax.data import pipeline
from engram_jax.train import checkpoint as ckpt_lib
from engram_jax.train import evaluation, metrics as metrics_lib, optimizer, step as step_lib
from engram_jax.train import mesh as mesh_lib, state as state_lib
from engram_jax.train.run_setup import RunInputs, prepare_inputs


@dataclasses.dataclass
class Geometry:
  """Batch shape of one optimiser step."""
  seq_len: int
  micro_rows: int
  micro_steps: int

  @property
  def tokens_per_step(self) -> int:
    return self.seq_len * self.micro_rows * self.micro_steps


def batch_geometry(cfg, mesh) -> Geometry:
  """Derive micro-steps from tokens per step; raise when the numbers do not divide."""
  T, rows = cfg.model.sequence_len, cfg.train.device_batch_size
  mesh_lib.batch_size_per_shard(rows, mesh)
  if rows % jax.process_count():
    raise ValueError(
        f"train.device_batch_size={rows} does not divide over {jax.process_count()} processes.")
  tokens_per_micro = rows * T
  if cfg.train.total_batch_tokens % tokens_per_micro:
    raise ValueError(
        f"train.total_batch_tokens={cfg.train.total_batch_tokens} is not a multiple of "
        f"device_batch_size x sequence_len = {tokens_per_micro}; change either so it divides.")
  return Geometry(T, rows, cfg.train.total_batch_tokens // tokens_per_micro)


def _log_start(cfg, geometry: Geometry, state: dict) -> None:
  sizes = state_lib.param_group_sizes(state["params"])
  logging.info("[start] %s: %s params", cfg.name, f"{sum(sizes.values()):,}")
  for group, size in sorted(sizes.items()):
    logging.info("[start]   %-22s %15s", group, f"{size:,}")
  logging.info("[start] %d steps of %d tokens (%d micro-steps x %d rows x %d)", cfg.train.num_iterations,
               geometry.tokens_per_step, geometry.micro_steps, geometry.micro_rows, geometry.seq_len)
  rates = ", ".join(f"{g} {lr:.4g}" for g, lr in optimizer.group_learning_rates(cfg).items())
  logging.info("[start] peak learning rates: %s", rates)


class _Evaluator:
  """Validation bpb with and without the Engram, plus a greedy sample."""

  def __init__(self, cfg, setup, inputs: RunInputs, mesh):
    with_engram = inputs.layout is not None
    shardings = mesh_lib.eval_batch_shardings(mesh, with_engram)
    raw, self.tokens = pipeline.val_batches(
        inputs.data_dir, seq_len=cfg.model.sequence_len, batch_rows=cfg.train.device_batch_size,
        max_tokens=cfg.train.eval_tokens, canonical_map=inputs.canonical_map, layout=inputs.layout)
    self.batches = [pipeline.to_global_eval(b, mesh, mesh_lib.BATCH_AXES) for b in raw]
    self.byte_lengths = jnp.asarray(inputs.byte_lengths)
    self.eval_fn = step_lib.compile_eval_step(setup, shardings, suppress_engram=False)
    self.eval_suppressed_fn = None
    if with_engram:
      self.eval_suppressed_fn = step_lib.compile_eval_step(setup, shardings, suppress_engram=True)
    self.setup, self.inputs, self.cfg = setup, inputs, cfg
    logging.info("[eval] %d validation batches, %d target tokens", len(self.batches), self.tokens)

  def bpb(self, params) -> dict:
    out = {"val_bpb": evaluation.evaluate_bpb(self.eval_fn, params, self.batches, self.byte_lengths)["bpb"]}
    if self.eval_suppressed_fn is not None:
      out["val_bpb_suppressed"] = evaluation.evaluate_bpb(
          self.eval_suppressed_fn, params, self.batches, self.byte_lengths)["bpb"]
    return out

  def sample(self, params, prompt: str = "The") -> str:
    tok = self.inputs.tokenizer
    ids = [tok.bos_id] + tok.encode(prompt)
    cmap = self.inputs.canonical_map
    out = evaluation.greedy_sample(
        self.setup, params, ids, self.cfg.train.sample_tokens, layout=self.inputs.layout,
        canonical_map=None if cmap is None else cmap.raw_to_canonical)
    return prompt + tok.decode(out)


def _restore_or_init(cfg, inputs: RunInputs, mesh, manager, meta):
  table_rows = inputs.layout.table_rows if inputs.layout is not None else None
  abstract_params = state_lib.abstract_params(cfg, table_rows)
  tx = optimizer.build_optimizer(cfg, abstract_params)
  state, setup = state_lib.create_train_state(cfg, table_rows, tx, mesh, seed=cfg.train.seed)
  restored = ckpt_lib.restore_latest(manager, setup.abstract_state, setup.state_shardings, meta)
  if restored is None:
    return state, setup, 0, None
  step, state, data_state = restored
  return state, setup, step, data_state


def train(cfg, workdir: str) -> dict:
  """Pretrain `cfg` in `workdir`; return the last logged metrics."""
  config_lib.validate(cfg)
  # Mesh and batch shape are checked before any data is prepared.
  mesh = mesh_lib.make_mesh(cfg.mesh)
  geometry = batch_geometry(cfg, mesh)
  inputs = prepare_inputs(cfg, workdir)
  manager = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"),
                                  save_every=cfg.train.checkpoint_every, max_to_keep=cfg.train.max_to_keep)
  meta = ckpt_lib.build_meta(cfg, tokenizer_fingerprint=inputs.tokenizer.fingerprint, layout=inputs.layout)
  state, setup, start_step, data_state = _restore_or_init(cfg, inputs, mesh, manager, meta)
  if start_step >= cfg.train.num_iterations:
    logging.info("[done] %s already contains step %d of %d; nothing to train. Raise "
                 "--config.train.num_iterations to train further.", workdir, start_step,
                 cfg.train.num_iterations)
    return {}
  _log_start(cfg, geometry, state)

  dataset = pipeline.train_dataset(
      inputs.data_dir, seq_len=geometry.seq_len, micro_batch_rows=geometry.micro_rows,
      micro_steps=geometry.micro_steps, canonical_map=inputs.canonical_map, layout=inputs.layout,
      seed=cfg.data.shuffle_seed)
  data_iter = iter(dataset)
  if data_state is not None:
    data_iter.set_state(data_state)
  batch_shardings = mesh_lib.batch_shardings(mesh, inputs.layout is not None)
  step_fn = step_lib.compile_train_step(setup, batch_shardings)
  evaluator = _Evaluator(cfg, setup, inputs, mesh)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step)
  try:
    with jax.set_mesh(mesh):
      last = _run_steps(cfg, geometry, state, start_step, step_fn, data_iter, batch_shardings,
                        evaluator, manager, meta, writer, mesh)
  finally:
    manager.wait_until_finished()
    writer.close()
  return last


def _run_steps(cfg, geometry, state, start_step, step_fn, data_iter, batch_shardings, evaluator,
               manager, meta, writer, mesh) -> dict:
  total = cfg.train.num_iterations
  progress = _Progress(cfg, geometry, start_step, writer, _flops_per_token(cfg, state))
  if start_step == 0:
    progress.record_eval(0, evaluator.bpb(state["params"]))
  for step in range(start_step, total):
    batch = pipeline.to_global(next(data_iter), mesh, mesh_lib.BATCH_AXES)
    state, step_metrics = step_fn(state, batch)
    done = step + 1
    # Read the previous step's metrics only now, so the host waits for the
    # step before, not for the one it just dispatched.
    progress.check_pending()
    progress.pending = (done, step_metrics)
    if done % cfg.train.eval_every == 0 or done == total:
      progress.check_pending()
      progress.record_eval(done, evaluator.bpb(state["params"]))
    if cfg.train.sample_every and (done % cfg.train.sample_every == 0 or done == total):
      logging.info("[sample] step %d: %r", done, evaluator.sample(state["params"]))
    if done % cfg.train.checkpoint_every == 0 or done == total:
      ckpt_lib.save(manager, done, state, data_iter.get_state(), meta, force=done == total)
  progress.check_pending()
  return progress.last


class _Progress:
  """Checks finiteness one step late and writes progress lines and metrics."""

  def __init__(self, cfg, geometry, start_step: int, writer, flops_per_token: float):
    self.cfg, self.writer, self.start_step = cfg, writer, start_step
    peak = evaluation.peak_flops(cfg.train.peak_flops)
    # Model FLOP/s over the peak of every device in the job; None when the peak is unknown (CPU).
    self.flops_fraction = None if peak is None else flops_per_token / (peak * jax.device_count())
    self.schedule = optimizer.lr_schedule(cfg.train.num_iterations, cfg.optim)
    self.speed = metrics_lib.Throughput(geometry.tokens_per_step, cfg.train.num_iterations, start_step)
    self.pending = None
    self.last: dict = {}

  def check_pending(self) -> None:
    if self.pending is None:
      return
    done, step_metrics = self.pending
    self.pending = None
    values = jax.device_get(step_metrics)
    _stop_if_not_finite(values, done)
    total = self.cfg.train.num_iterations
    if done % self.cfg.train.log_every and done != total and done != self.start_step + 1:
      return
    tokens_per_s, eta = self.speed.update(done)
    record = {"train_loss": float(values["train_loss"]), "lr_mult": float(self.schedule(done - 1)),
              "tokens_per_s": tokens_per_s, "grad_norm": float(values["grad_norm"])}
    mfu = "n/a"
    if self.flops_fraction is not None:
      record["mfu"] = tokens_per_s * self.flops_fraction
      mfu = f"{100 * record['mfu']:.1f}%"
    self.last.update(record)
    self.writer.write(done, record)
    logging.info("[train] step %d/%d loss %.4f lr x%.3f %.0f tok/s mfu %s eta %s", done, total,
                 record["train_loss"], record["lr_mult"], tokens_per_s, mfu,
                 metrics_lib.format_duration(eta))

  def record_eval(self, done: int, values: dict) -> None:
    self.last.update(values)
    self.writer.write(done, values)
    logging.info("[eval] step %d: %s", done, _fmt(values))


def _flops_per_token(cfg, state) -> float:
  return evaluation.matmul_flops_per_token(
      state_lib.param_group_sizes(state["params"]), depth=cfg.model.depth,
      width=config_lib.model_width(cfg.model), sequence_len=cfg.model.sequence_len)


def _stop_if_not_finite(values, step: int) -> None:
  if not bool(values["finite"]):
    raise FloatingPointError(
        f"Training loss became {float(values['train_loss'])} at step {step}; the update was not "
        "applied and no checkpoint was written after it. Lower the learning rates "
        "(--config.optim.*) and rerun; the run resumes from the last committed checkpoint.")


def _fmt(values: dict) -> str:
  return " ".join(f"{k} {v:.4f}" for k, v in values.items() if k.startswith("val_"))
