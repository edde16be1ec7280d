"""From nothing to a memory report: data, tiny pretraining, users, maps, evaluation.

  python -m launch.quickstart [--workdir=runs/quickstart] [--users=DIR] [--num_users=5]
      [--seeds=0,1,2] [--strategies=joint_opt,unembed_p,random] [--pretrain_steps=N]

Stages, each logged with its elapsed time:
1. tokenizer, token shards and pretraining of --config (configs/tiny.py by
   default). A workdir whose newest checkpoint already reached the step count
   is reused without training; a partial run resumes.
2. users: --users (files in the reference format) or --num_users synthetic
   users, written to <workdir>/quickstart/users.

The users/ and maps/ folders under <workdir>/quickstart are emptied at the
start of every run, so they only contain this run's users and maps.
3. memory maps per strategy and seed (as launch.write_memory writes them), in
   <workdir>/quickstart/maps.
4. evaluation (as launch.eval_memory runs it): report.json, report.md,
   recall.png and predictions.jsonl in <workdir>/quickstart.
"""

import os
import pathlib
import shutil
import time

from absl import app, flags, logging
from ml_collections import config_flags

from evals import map_store, memory_eval, report as report_lib

_REPO = pathlib.Path(__file__).resolve().parents[1]

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_REPO / "configs" / "tiny.py"), "Pretraining config file (default: configs/tiny.py).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Run directory; a finished run in it is reused.")
_USERS = flags.DEFINE_string("users", None, "User JSON file or directory (default: synthetic users).")
_NUM_USERS = flags.DEFINE_integer("num_users", 5, "Synthetic users to generate when --users is unset.")
_USER_SEED = flags.DEFINE_integer("user_seed", 0, "Synthetic user generator seed.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Writing seeds.")
_STRATEGIES = flags.DEFINE_list("strategies", ["joint_opt", "unembed_p", "random"],
                                f"Writers, from {list(map_store.STRATEGIES)}.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", None, "Override train.num_iterations (reduced budgets).")
_EVAL_TOKENS = flags.DEFINE_integer("eval_tokens", None,
                                    "Validation target tokens for Δbpb (default: the whole split).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Probes per evaluation forward pass.")
_JOINT_MAX_STEPS = flags.DEFINE_integer("joint_max_steps", None, "Joint OPT step limit (default: its own).")
_CONTINUATION = flags.DEFINE_enum(
    "continuation", "order", list(map_store.CONTINUATIONS),
    "Heads written at answer positions after the trigger: all, the highest n-gram order, or none.")
_VALUE_DTYPE = flags.DEFINE_enum("value_dtype", "bfloat16", list(map_store.VALUE_DTYPES),
                                 "Stored dtype of map values (training is float32).")


class _Stages:
  """Logs each stage's and the total elapsed seconds."""

  def __init__(self):
    self.start = time.perf_counter()
    self.seconds: dict[str, float] = {}

  def run(self, name: str, fn, *args, **kwargs):
    logging.info("[quickstart] %s: start", name)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    self.seconds[name] = time.perf_counter() - start
    logging.info("[quickstart] %s: done in %.1fs (total %.1fs)", name, self.seconds[name],
                 time.perf_counter() - self.start)
    return result


def _checkpoint_step(workdir: str) -> int | None:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return None
  from engram_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  manager = ckpt_lib.make_manager(directory, save_every=1, max_to_keep=None, async_save=False)
  return manager.latest_step()


def pretrain(cfg, workdir: str) -> None:
  """Train `cfg` in `workdir` unless its newest checkpoint already reached the step count."""
  step = _checkpoint_step(workdir)
  if step is not None and step >= cfg.train.num_iterations:
    logging.info("[quickstart] reusing the finished run in %s (step %d)", workdir, step)
    return
  from engram_jax.train import loop  # pylint: disable=g-import-not-at-top
  loop.train(cfg, workdir)


def apply_step_budget(cfg, steps: int | None) -> None:
  """Set num_iterations and keep the eval, checkpoint and sample intervals inside it."""
  if steps is None:
    return
  if steps < 1:
    raise app.UsageError(f"--pretrain_steps={steps} must be at least 1.")
  cfg.train.num_iterations = steps
  for field in ("eval_every", "checkpoint_every"):
    cfg.train[field] = min(cfg.train[field], steps)
  cfg.train.sample_every = 0


def prepare_users(out_dir: pathlib.Path, users_path: str | None, num_users: int, seed: int):
  """Load --users, or generate synthetic users; write them to `out_dir` either way."""
  from engram_jax.users import generate_users, load_users, save_user  # pylint: disable=g-import-not-at-top
  # Users are read before `out_dir` is emptied, so --users may point at it.
  users = load_users(users_path) if users_path else generate_users(num_users, seed)
  if out_dir.exists():
    shutil.rmtree(out_dir)
  for user in users:
    save_user(user, out_dir / f"{user.uid}.json")
  logging.info("[quickstart] %d users: %s", len(users), ", ".join(u.uid for u in users))
  return users


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  apply_step_budget(cfg, _PRETRAIN_STEPS.value)
  try:
    seeds = map_store.parse_seeds(_SEEDS.value)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  workdir = _WORKDIR.value
  out = pathlib.Path(workdir) / "quickstart"
  stages = _Stages()
  stages.run("pretrain", pretrain, cfg, workdir)

  from engram_jax.train.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top
  users = stages.run("users", prepare_users, out / "users", _USERS.value, _NUM_USERS.value,
                     _USER_SEED.value)
  pre = stages.run("load", load_pretrained, workdir)
  joint = map_store.joint_settings(_JOINT_MAX_STEPS.value)
  if (out / "maps").exists():
    shutil.rmtree(out / "maps")
  runs = stages.run("write", map_store.write_maps, pre, users, strategies=_STRATEGIES.value,
                    seeds=seeds, maps_dir=out / "maps", joint_settings=joint,
                    continuation=_CONTINUATION.value, value_dtype=_VALUE_DTYPE.value, overwrite=True)
  report = stages.run("eval", memory_eval.run_evaluation, pre, users, runs, out_dir=out,
                      eval_tokens=_EVAL_TOKENS.value, batch_size=_BATCH_SIZE.value,
                      extra={"stage_seconds": dict(stages.seconds)})
  logging.info("[quickstart] stage seconds: %s", {k: round(v, 1) for k, v in stages.seconds.items()})
  print(report_lib.format_table(report))
  print(f"Report: {out / 'report.md'}")


if __name__ == "__main__":
  app.run(main)
