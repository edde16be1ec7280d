"""Map files of an evaluation: write them per strategy, seed and user, and load them back.

Files live at <maps_dir>/<strategy>/seed<seed>/<uid>.safetensors. A written
map's settings gain a "write" entry: the seed, the writing seconds and whether
every anticipated phrasing was written (multi_trigger). Strategies: random and
unembed_p (controls without training), opt (each fact alone) and joint_opt
(all of a user's facts together). Only joint_opt uses the seed; the other
writers give the same map for every seed.
"""

import dataclasses
import pathlib
import re
import time
from collections.abc import Sequence

from absl import logging

from engram_jax.memory import joint_opt, load_map, model_fingerprint, save_map, writers
from engram_jax.memory.facts import encode_facts, order_heads
from engram_jax.memory.maps import OverrideMap
from engram_jax.train.pretrained import Pretrained
from engram_jax.users import User, fact_prompts

STRATEGIES = ("random", "unembed_p", "opt", "joint_opt")
# Hash heads written at the positions after the trigger, which predict the later answer
# tokens: "all" heads, the highest n-gram "order" heads (the default, half the rows of "all"
# at N=3), or "none".
CONTINUATIONS = ("all", "order", "none")
VALUE_DTYPES = ("float32", "bfloat16")
_SEED_DIR = re.compile(r"^seed(\d+)$")


def map_path(maps_dir: str | pathlib.Path, strategy: str, seed: int, uid: str) -> pathlib.Path:
  return pathlib.Path(maps_dir) / strategy / f"seed{seed}" / f"{uid}.safetensors"


def discover_maps(maps_dir: str | pathlib.Path) -> dict[str, dict[int, dict[str, pathlib.Path]]]:
  """Return {strategy: {seed: {uid: path}}} for every map file under `maps_dir`."""
  root = pathlib.Path(maps_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"{root} is not a directory; write maps with `python -m launch.write_memory`.")
  found: dict[str, dict[int, dict[str, pathlib.Path]]] = {}
  for path in sorted(root.glob("*/seed*/*.safetensors")):
    seed_match = _SEED_DIR.match(path.parent.name)
    if seed_match:
      found.setdefault(path.parent.parent.name, {}).setdefault(
          int(seed_match.group(1)), {})[path.stem] = path
  if not found:
    raise ValueError(f"No map files (<strategy>/seed<k>/<uid>.safetensors) found in {root}; "
                     "write them with `python -m launch.write_memory`.")
  return found


def load_run_maps(pre: Pretrained, maps_dir, users: Sequence[User], *,
                  strategies: Sequence[str] | None = None,
                  seeds: Sequence[int] | None = None) -> dict[str, dict[int, dict[str, OverrideMap]]]:
  """Load the maps of `users` for the chosen strategies and seeds, checked against the model."""
  found = discover_maps(maps_dir)
  fingerprint = model_fingerprint(pre.cfg, pre.tokenizer.fingerprint, pre.layout)
  layer_index = pre.layout.layer_ids.index(pre.memory_layer)
  out: dict[str, dict[int, dict[str, OverrideMap]]] = {}
  for strategy in strategies or sorted(found):
    if strategy not in found:
      raise ValueError(f"No maps for strategy {strategy!r} in {maps_dir}; found {sorted(found)}. "
                       f"Pick --strategies from those, or write {strategy} maps first with "
                       "`python -m launch.write_memory`.")
    for seed in seeds if seeds is not None else sorted(found[strategy]):
      paths = found[strategy].get(seed, {})
      missing = [u.uid for u in users if u.uid not in paths]
      if missing:
        raise ValueError(
            f"{maps_dir}/{strategy}/seed{seed} lacks maps for users {missing}; pass the --users "
            "the maps were written for, or write them with `python -m launch.write_memory "
            f"--strategies={strategy} --seeds={seed}`.")
      out.setdefault(strategy, {})[seed] = {
          u.uid: load_map(paths[u.uid], expected_fingerprint=fingerprint,
                          table_rows=pre.layout.table_rows[layer_index]) for u in users}
  return out


def _with_write_record(m: OverrideMap, *, seed: int, seconds: float, multi_trigger: bool,
                       extra: dict | None = None) -> OverrideMap:
  record = {"seed": seed, "seconds": seconds, "multi_trigger": multi_trigger, **(extra or {})}
  return dataclasses.replace(m, settings=dict(m.settings, write=record))


def _fixed_writer(strategy: str):
  return {"random": writers.write_random, "unembed_p": writers.write_unembed_p,
          "opt": writers.write_opt}[strategy]


def continuation_heads(pre: Pretrained, continuation: str) -> tuple[int, ...] | None:
  """Heads written after the trigger for a CONTINUATIONS choice (None: every head)."""
  if continuation not in CONTINUATIONS:
    raise ValueError(f"continuation={continuation!r} is not one of {list(CONTINUATIONS)}.")
  if continuation == "all":
    return None
  return () if continuation == "none" else tuple(order_heads(pre.layout, pre.layout.max_ngram))


def _write_per_user(pre: Pretrained, strategy: str, seed: int, examples_by_user, fingerprint,
                    multi_trigger: bool, heads) -> dict[str, OverrideMap]:
  """Writers without a seed: each user's map on its own, timed with wall-clock seconds."""
  out = {}
  for uid, examples in examples_by_user.items():
    start = time.perf_counter()
    m = _fixed_writer(strategy)(pre.model, examples, pre.layout, pre.canonical_map,
                                model_fingerprint=fingerprint, continuation_heads=heads)
    seconds = time.perf_counter() - start
    # NOTE: these seconds include any compilation the writer triggers (OPT compiles per shape).
    out[uid] = _with_write_record(m, seed=seed, seconds=seconds, multi_trigger=multi_trigger,
                                  extra={"includes_compile": strategy == "opt"})
  return out


def _write_joint(pre: Pretrained, seed: int, examples_by_user, fingerprint, multi_trigger: bool,
                 settings: joint_opt.JointOptSettings, heads, keep_text) -> dict[str, OverrideMap]:
  """Joint OPT for all users in one compiled program; each user is charged its share of the time."""
  results = joint_opt.write_joint_opt_users(
      pre.model, list(examples_by_user.values()), pre.layout, pre.canonical_map,
      model_fingerprint=fingerprint, settings=dataclasses.replace(settings, seed=seed),
      continuation_heads=heads, keep_text=keep_text)
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
               continuation: str = "order", value_dtype: str = "bfloat16", keep_text=None,
               overwrite: bool = False) -> dict[str, dict[int, dict[str, OverrideMap]]]:
  """Write and save every (strategy, seed, user) map; return {strategy: {seed: {uid: map}}}.

  Values are trained in float32 and stored as `value_dtype`; the returned maps
  are the stored ones. `keep_text` (raw token ids) feeds Joint OPT's keep term.
  """
  unknown = [s for s in strategies if s not in STRATEGIES]
  if unknown or not strategies:
    raise ValueError(f"Unknown or no strategies {unknown or list(strategies)}; use some of {list(STRATEGIES)}.")
  if value_dtype not in VALUE_DTYPES:
    raise ValueError(f"value_dtype={value_dtype!r} is not one of {list(VALUE_DTYPES)}.")
  heads = continuation_heads(pre, continuation)
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
        maps = _write_joint(pre, seed, examples_by_user, fingerprint, multi_trigger, joint_settings,
                            heads, keep_text)
      else:
        maps = _write_per_user(pre, strategy, seed, examples_by_user, fingerprint, multi_trigger,
                               heads)
      maps = {uid: m.to_dtype(value_dtype) for uid, m in maps.items()}
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
    raise ValueError(f"seeds={','.join(values)} must be comma-separated integers.") from error
  if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds={','.join(values)} must list distinct non-negative integers.")
  return seeds


def joint_settings(max_steps: int | None = None, learning_rate: float | None = None,
                   keep_weight: float | None = None,
                   anchor_weight: float | None = None,
                   anchor: str | None = None) -> joint_opt.JointOptSettings:
  """Joint OPT defaults with the given fields replaced (None keeps the default)."""
  changes = {"max_steps": max_steps, "learning_rate": learning_rate, "keep_weight": keep_weight,
             "anchor_weight": anchor_weight, "anchor": anchor}
  return dataclasses.replace(joint_opt.JointOptSettings(),
                             **{k: v for k, v in changes.items() if v is not None})


def keep_text_for(pre: Pretrained, settings: joint_opt.JointOptSettings, tokens: int):
  """Raw train-split tokens for the keep term and the reads anchor, or None when neither is on."""
  if settings.keep_weight == 0 and settings.anchor != "reads":
    return None
  from engram_jax.memory import keep  # pylint: disable=g-import-not-at-top
  from evals.locality import data_dir  # pylint: disable=g-import-not-at-top
  return keep.train_text(data_dir(pre), tokens)
