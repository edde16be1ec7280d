"""Write per-user memory maps from a pretrained checkpoint.

  python -m launch.write_memory --workdir=runs/tiny --users=/path/to/users \\
      [--maps_dir=runs/tiny/memory] [--strategies=joint_opt,unembed_p,random] [--seeds=0,1,2]

Each user gets one safetensors file per strategy and seed, at
<maps_dir>/<strategy>/seed<seed>/<uid>.safetensors. A map's settings gain a
"write" entry: the seed, the writing seconds and whether every anticipated
phrasing was written (multi_trigger). Strategies: random and unembed_p
(controls without training), opt (each fact alone) and joint_opt (all of a
user's facts together). Only joint_opt uses the seed; the other writers give
the same map for every seed.
"""

import dataclasses
import pathlib
import time
from collections.abc import Sequence

from absl import app, flags, logging

from engram_jax.memory import model_fingerprint, save_map
from engram_jax.memory import joint_opt, writers
from engram_jax.memory.facts import encode_facts
from engram_jax.memory.maps import OverrideMap
from engram_jax.train.pretrained import Pretrained
from engram_jax.users import User, fact_prompts
from evals.memory_eval import map_path

STRATEGIES = ("random", "unembed_p", "opt", "joint_opt")

_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir with checkpoints/ and tokenizer/.")
_USERS = flags.DEFINE_string("users", None, "A user JSON file or a directory of them (u000.json, ...).")
_MAPS_DIR = flags.DEFINE_string("maps_dir", None, "Output directory (default <workdir>/memory).")
_STRATEGIES = flags.DEFINE_list("strategies", ["joint_opt", "unembed_p", "random"],
                                f"Writers to run, from {list(STRATEGIES)}.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Writing seeds (Joint OPT minibatch order).")
_MULTI_TRIGGER = flags.DEFINE_bool("multi_trigger", False, "Write every anticipated phrasing of a fact.")
_JOINT_MAX_STEPS = flags.DEFINE_integer("joint_max_steps", None, "Joint OPT step limit (default: its own).")
_JOINT_LR = flags.DEFINE_float("joint_learning_rate", None, "Joint OPT Adam learning rate (default: its own).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace map files that differ from the new ones.")


def _with_write_record(m: OverrideMap, *, seed: int, seconds: float, multi_trigger: bool,
                       extra: dict | None = None) -> OverrideMap:
  record = {"seed": seed, "seconds": seconds, "multi_trigger": multi_trigger, **(extra or {})}
  return dataclasses.replace(m, settings=dict(m.settings, write=record))


def _fixed_writer(strategy: str):
  return {"random": writers.write_random, "unembed_p": writers.write_unembed_p,
          "opt": writers.write_opt}[strategy]


def _write_per_user(pre: Pretrained, strategy: str, seed: int, examples_by_user, fingerprint,
                    multi_trigger: bool) -> dict[str, OverrideMap]:
  """Writers without a seed: each user's map on its own, timed with wall-clock seconds."""
  out = {}
  for uid, examples in examples_by_user.items():
    start = time.perf_counter()
    m = _fixed_writer(strategy)(pre.model, examples, pre.layout, pre.canonical_map,
                                model_fingerprint=fingerprint)
    seconds = time.perf_counter() - start
    # NOTE: these seconds include any compilation the writer triggers (OPT compiles per shape).
    out[uid] = _with_write_record(m, seed=seed, seconds=seconds, multi_trigger=multi_trigger,
                                  extra={"includes_compile": strategy == "opt"})
  return out


def _write_joint(pre: Pretrained, seed: int, examples_by_user, fingerprint, multi_trigger: bool,
                 settings: joint_opt.JointOptSettings) -> dict[str, OverrideMap]:
  """Joint OPT for all users in one compiled program; each user is charged its share of the time."""
  results = joint_opt.write_joint_opt_users(
      pre.model, list(examples_by_user.values()), pre.layout, pre.canonical_map,
      model_fingerprint=fingerprint, settings=dataclasses.replace(settings, seed=seed))
  out = {}
  for uid, (m, stats) in zip(examples_by_user, results):
    out[uid] = _with_write_record(
        m, seed=seed, seconds=stats.seconds_per_fact * stats.num_facts, multi_trigger=multi_trigger,
        extra={"includes_compile": False, "compile_seconds": stats.compile_seconds,
               "steps": stats.steps, "train_recall": stats.recall, "final_loss": stats.final_loss})
  return out


def write_maps(pre: Pretrained, users: Sequence[User], *, strategies: Sequence[str],
               seeds: Sequence[int], maps_dir: str | pathlib.Path, multi_trigger: bool = False,
               joint_settings: joint_opt.JointOptSettings = joint_opt.JointOptSettings(),
               overwrite: bool = False) -> dict[str, dict[int, dict[str, OverrideMap]]]:
  """Write and save every (strategy, seed, user) map; return {strategy: {seed: {uid: map}}}."""
  unknown = [s for s in strategies if s not in STRATEGIES]
  if unknown or not strategies:
    raise ValueError(f"Unknown or no strategies {unknown or list(strategies)}; use some of {list(STRATEGIES)}.")
  if not users:
    raise ValueError("No users were given; pass a user file or directory.")
  fingerprint = model_fingerprint(pre.cfg, pre.tokenizer.fingerprint, pre.layout)
  examples_by_user = {u.uid: encode_facts(fact_prompts(u), pre.tokenizer, multi_trigger=multi_trigger)
                      for u in users}
  runs: dict[str, dict[int, dict[str, OverrideMap]]] = {}
  for strategy in strategies:
    for seed in seeds:
      start = time.perf_counter()
      if strategy == "joint_opt":
        maps = _write_joint(pre, seed, examples_by_user, fingerprint, multi_trigger, joint_settings)
      else:
        maps = _write_per_user(pre, strategy, seed, examples_by_user, fingerprint, multi_trigger)
      for uid, m in maps.items():
        save_map(map_path(maps_dir, strategy, seed, uid), m, overwrite=overwrite)
      runs.setdefault(strategy, {})[seed] = maps
      rows = sum(m.num_rows for m in maps.values())
      logging.info("[write] %s seed %d: %d users, %d rows in %.1fs", strategy, seed, len(maps), rows,
                   time.perf_counter() - start)
  return runs


def parse_seeds(values: Sequence[str]) -> list[int]:
  """Parse seed flag values into distinct non-negative integers."""
  try:
    seeds = [int(v) for v in values]
  except ValueError as error:
    raise app.UsageError(f"--seeds={','.join(values)} must be comma-separated integers.") from error
  if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
    raise app.UsageError(f"--seeds={','.join(values)} must list distinct non-negative integers.")
  return seeds


def joint_settings_from_flags(max_steps: int | None, learning_rate: float | None):
  changes = {}
  if max_steps is not None:
    changes["max_steps"] = max_steps
  if learning_rate is not None:
    changes["learning_rate"] = learning_rate
  return dataclasses.replace(joint_opt.JointOptSettings(), **changes)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value or not _USERS.value:
    raise app.UsageError("--workdir and --users are required.")
  from engram_jax.train.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top
  from engram_jax.users import load_users  # pylint: disable=g-import-not-at-top
  pre = load_pretrained(_WORKDIR.value)
  users = load_users(_USERS.value)
  maps_dir = _MAPS_DIR.value or str(pathlib.Path(_WORKDIR.value) / "memory")
  write_maps(pre, users, strategies=_STRATEGIES.value, seeds=parse_seeds(_SEEDS.value),
             maps_dir=maps_dir, multi_trigger=_MULTI_TRIGGER.value,
             joint_settings=joint_settings_from_flags(_JOINT_MAX_STEPS.value, _JOINT_LR.value),
             overwrite=_OVERWRITE.value)
  logging.info("[write] maps in %s", maps_dir)


if __name__ == "__main__":
  app.run(main)
