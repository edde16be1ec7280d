"""Evaluate per-user memory maps: recall, locality, leakage, storage and write time.

`evaluate_memory` takes a pretrained model, users and maps grouped by
strategy and seed, and returns the report dict (evals.report) with the
per-seed results. `run_evaluation` also reads the validation rows and writes
the report files. Map files are read and written by evals.map_store.

A map's `settings["write"]` entry, added by evals.map_store.write_maps,
records the writing seed, the wall-clock seconds and whether every
anticipated phrasing was written (multi_trigger). Maps without it get no
write time.
"""

import dataclasses
import hashlib
import pathlib
import time
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

from engram_jax.memory.maps import OverrideMap, check_map_fits
from engram_jax.train.pretrained import Pretrained
from engram_jax.users import User

from evals import recall, report as report_lib
from evals.decode import ModelRunner, offtrigger_residual_change, padded_slots
from evals.locality import ValidationSet, compute_base, load_validation, map_locality

BASE_STRATEGY = "none"  # the bare model, evaluated once as a reference row

DEFINITIONS = {
    "exact_match": "the greedy continuation starts with the whole gold answer (normalised "
                   "word match) and the next character does not continue a word",
    "first_token_topk": "secondary: rank < k, where rank counts vocabulary entries whose logit "
                        "at the trigger position is strictly greater than the gold's first token",
    "seen / heldout": "seen = the prompts the map was written from; heldout = the direct_qa "
                      "questions as 'Q: ...\\nA:', never written",
    "leakage.rate": "share of (user B prompt, co-resident user A) checks in one batched forward "
                    "pass, each sequence with its own user's map, whose output states A's answer "
                    "and not B's own",
    "leakage.rate_beyond_bare_model": "leaks whose prompt the bare model does not already answer "
                                      "with the other user's answer, over all checks",
    "leakage.rate_beyond_alone": "leaks that vanish when the prompt is decoded without other "
                                 "users in its batch (leaks caused by sharing a batch), over all "
                                 "checks",
    "leakage.swap_control_rate": "a user's prompts with the next user's map: share of outputs "
                                 "stating the map owner's answer and not the prompt owner's",
    "locality.delta_bpb": "validation bpb with the map minus without it, per user map",
    "locality.mean_user_max_residual_change_off_trigger": (
        "per user and seed: the largest absolute change (map vs no map) of any final-residual "
        "element at the positions before the trigger, over the user's seen prompts; mean over "
        "users and seeds, bootstrap over users"),
    "locality.max_residual_change_off_trigger": "the largest of those per-user-and-seed values "
                                                "({max, n}); a worst case, so it has no interval",
    "storage.bytes_per_fact": "rows * (row width * value bytes + 4) / facts",
    "write.seconds_per_fact": "wall-clock writing seconds / facts; Joint OPT trains all users in "
                              "one program, so each user is charged the shared seconds per fact",
    "writer_settings": "per strategy, the distinct values found in the maps' settings (keys "
                       "missing from every map are left out) and the stored value dtypes; more "
                       "than one value means maps written with different settings were mixed",
}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """Batch sizes and the validation budget of one evaluation."""
  batch_size: int = 32  # probes per forward pass
  eval_tokens: int | None = None  # validation target tokens for Δbpb; None: the whole split
  val_batch_rows: int = 8  # validation rows per forward pass
  include_base: bool = True  # add the bare model as strategy "none"

  def __post_init__(self):
    _check_positive("batch_size", self.batch_size, "the probes per forward pass",
                    "--batch_size=32 (the default) or another value of at least 1")
    if self.eval_tokens is not None:
      _check_positive("eval_tokens", self.eval_tokens, "the validation target tokens for Δbpb",
                      "--eval_tokens=N with N >= 1, or leave the flag out to use the whole split")
    _check_positive("val_batch_rows", self.val_batch_rows, "the validation rows per forward pass",
                    "val_batch_rows=8 (the default) or another value of at least 1")


def _check_positive(name: str, value, meaning: str, fix: str) -> None:
  """Raise TypeError or ValueError unless `value` is an integer of at least 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name}={value!r} is not an integer; {meaning} must be a whole number. Pass {fix}.")
  if value < 1:
    raise ValueError(f"{name}={value} is invalid: {meaning} must be at least 1. Pass {fix}.")


def check_map_labels(runs: Mapping[str, Mapping[int, Mapping[str, OverrideMap | None]]],
                     maps_dir: str | pathlib.Path | None = None) -> None:
  """Check that each map's owner is its user id and its strategy is its run's strategy name.

  Map files are found by their folder and file names, so a copied or renamed
  file would otherwise be scored under the wrong user or strategy. With
  `maps_dir` the errors name the file <maps_dir>/<strategy>/seed<k>/<uid>.safetensors.
  """
  for strategy, seeds in runs.items():
    for seed, maps in seeds.items():
      for uid, m in maps.items():
        if m is None:
          continue
        where = f"{strategy}/seed{seed}/{uid}.safetensors"
        if maps_dir is not None:
          where = str(pathlib.Path(maps_dir) / where)
        rewrite = (f"write it again by rerunning `python -m launch.write_memory` with "
                   f"--strategies={strategy} --seeds={seed} --overwrite")
        if m.owner != uid:
          raise ValueError(f"{where}: the map belongs to user {m.owner!r}, not {uid!r}; {rewrite}, "
                           f"or rename the file to {m.owner}.safetensors if it is the map of user "
                           f"{m.owner!r}.")
        if m.strategy != strategy:
          raise ValueError(f"{where}: the map was written by strategy {m.strategy!r}, but its folder "
                           f"names strategy {strategy!r}; {rewrite}, or move the file into the "
                           f"{m.strategy}/ folder. To compare writer settings, write each setting "
                           "into its own --maps_dir instead of renaming strategy folders.")


def _check_maps(runner: ModelRunner, maps: Mapping[str, OverrideMap | None], where: str) -> None:
  for uid, m in maps.items():
    if m is None:
      continue
    check_map_fits(m, row_width=runner.row_width, where=f"{where}/{uid}")
    if m.layer != runner.layer:
      raise ValueError(f"{where}/{uid}: the map targets block {m.layer}, but the model's memory "
                       f"layer is block {runner.layer}; write it for this model.")


def _maps_digest(maps: Mapping[str, OverrideMap | None]) -> str:
  digest = hashlib.sha256()
  for uid in sorted(maps):
    m = maps[uid]
    digest.update(uid.encode())
    if m is None:
      digest.update(b"no map")
    else:
      digest.update(f"map {m.num_rows} {m.value_dtype}".encode())
      digest.update(m.rows.tobytes())
      digest.update(m.values.tobytes())
  return digest.hexdigest()


def _slots(runs: Mapping[str, Mapping[int, Mapping[str, OverrideMap | None]]]) -> int:
  """Return one slot count for every run, so all batches share compiled shapes."""
  return padded_slots([m for seeds in runs.values() for maps in seeds.values() for m in maps.values()])


class _Evaluator:
  """Evaluates one (strategy, seed) set of maps with shared shapes and validation rows."""

  def __init__(self, runner, facts, val, settings, slots, steps):
    self.runner, self.facts, self.val = runner, facts, val
    self.settings, self.slots, self.steps = settings, slots, steps
    self._done: dict[str, dict] = {}
    self.bare_outputs: dict[tuple[str, str], str] | None = None

  def run(self, strategy: str, seed: int, maps: Mapping[str, OverrideMap | None]) -> dict:
    digest = _maps_digest(maps)
    if digest in self._done:
      # Bit-identical maps (a deterministic writer) give identical outputs; only write times differ.
      logging.info("[eval] %s seed %d: maps equal an earlier seed's, reusing its outputs", strategy, seed)
      previous = self._done[digest]
    else:
      previous = self._evaluate(strategy, seed, maps)
      self._done[digest] = previous
    users = {uid: dict(values, **_write_numbers(maps[uid])) for uid, values in previous["users"].items()}
    return dict(previous, strategy=strategy, seed=seed, users=users, maps=dict(maps),
                steps=self.steps, slots=self.slots)

  def _evaluate(self, strategy: str, seed: int, maps: Mapping[str, OverrideMap | None]) -> dict:
    start = time.perf_counter()
    probes = recall.build_probes(self.runner.pre.tokenizer, self.facts, maps)
    records = []
    for split in ("seen", "heldout", "swap"):
      records += recall.run_probes(self.runner, probes[split], maps, steps=self.steps,
                                   batch_size=self.settings.batch_size, slots=self.slots)
    seen = [r for r in records if r["split"] == "seen"]
    if all(m is None for m in maps.values()):
      self.bare_outputs = {(r["uid"], r["prompt"]): r["output"] for r in seen}
    checks = self._leak_checks(seen, probes["seen"], maps)
    users = self._map_numbers(maps, probes["seen"])
    logging.info("[eval] %s seed %d: %d probes, %d leak checks in %.1fs", strategy, seed,
                 len(records), len(checks), time.perf_counter() - start)
    return {"probes": records, "leak_checks": checks, "users": users}

  def _leak_checks(self, seen_records, seen_probes, maps) -> list[dict]:
    """Leak checks with the bare-model control and, for leaking prompts, the decoded-alone control."""
    controls = {} if self.bare_outputs is None else {"bare": self.bare_outputs}
    checks = recall.leak_checks(seen_records, self.facts, controls)
    leaking = {(c["uid"], c["key"]) for c in checks if c["leak"]}
    if not leaking:
      return checks
    # Only leaking prompts are decoded again, each without other users in its batch.
    again = [p for p in seen_probes if (p.uid, p.key) in leaking]
    controls["alone"] = recall.alone_outputs(self.runner, again, maps, steps=self.steps,
                                             batch_size=self.settings.batch_size, slots=self.slots)
    return recall.leak_checks(seen_records, self.facts, controls)

  def _map_numbers(self, maps, seen_probes) -> dict[str, dict]:
    present = {uid: m for uid, m in maps.items() if m is not None}
    locality = map_locality(self.runner, self.val, present, self.slots) if present else {}
    change = np.zeros(len(seen_probes))
    if present:
      change = offtrigger_residual_change(
          self.runner, [p.prompt_ids for p in seen_probes],
          [maps[p.uid] for p in seen_probes], batch_size=self.settings.batch_size, slots=self.slots)
    out = {}
    for uid, m in maps.items():
      mine = [c for c, p in zip(change, seen_probes) if p.uid == uid]
      values = {"num_facts": len(self.facts[uid]), "offtrigger_change": float(max(mine, default=0.0))}
      if m is None:
        values.update(delta_bpb=0.0, firing_rate=0.0, storage_bytes=0, num_rows=0, value_dtype=None)
      else:
        values.update(delta_bpb=locality[uid]["delta_bpb"], firing_rate=locality[uid]["firing_rate"],
                      storage_bytes=m.storage_bytes(), num_rows=m.num_rows, value_dtype=m.value_dtype)
      out[uid] = values
    return out


def _write_numbers(m: OverrideMap | None) -> dict:
  seconds = None if m is None else m.settings.get("write", {}).get("seconds")
  return {"write_seconds": seconds}


def evaluate_memory(pre: Pretrained, users: Sequence[User],
                    runs: Mapping[str, Mapping[int, Mapping[str, OverrideMap]]],
                    val: ValidationSet,
                    settings: EvalSettings = EvalSettings()) -> tuple[dict, dict[str, list[dict]]]:
  """Evaluate every (strategy, seed) run of maps; return (report dict, seed results by strategy).

  `runs` is {strategy: {seed: {uid: map}}}; every run must cover all `users`.
  The seed results hold every probe record, for a predictions file.
  """
  if not users:
    raise ValueError("No users to evaluate; pass at least one user.")
  runner = ModelRunner(pre)
  runs = {name: dict(seeds) for name, seeds in runs.items()}
  if settings.include_base:
    runs = {BASE_STRATEGY: {0: {u.uid: None for u in users}}, **runs}
  uids = {u.uid for u in users}
  for name, seeds in runs.items():
    for seed, maps in seeds.items():
      if set(maps) != uids:
        raise ValueError(f"Run {name}/seed{seed} has maps for {sorted(maps)}, but the users are "
                         f"{sorted(uids)}; pass one map (or None) per user.")
      _check_maps(runner, maps, f"{name}/seed{seed}")
  check_map_labels(runs)
  facts = recall.user_fact_prompts(users)
  slots = _slots(runs)
  start = time.perf_counter()
  compute_base(runner, val, slots)
  logging.info("[eval] base bpb %.4f on %d tokens in %.1fs", val.base_bpb, val.tokens,
               time.perf_counter() - start)
  evaluator = _Evaluator(runner, facts, val, settings, slots, recall.decode_steps(pre.tokenizer, facts))
  strategies, all_seeds, seed_results = {}, set(), {}
  for name, seeds in runs.items():
    results = [evaluator.run(name, seed, seeds[seed]) for seed in sorted(seeds)]
    seed_results[name] = results
    strategies[name] = report_lib.aggregate_strategy(results)
    if name != BASE_STRATEGY:
      all_seeds.update(seeds)
  report = {
      "model": {"workdir": str(pre.workdir), "name": pre.cfg.name, "step": pre.step,
                "memory_layer": runner.layer},
      "users": [u.uid for u in users],
      "seeds": sorted(all_seeds),
      "num_facts": {uid: len(per_user) for uid, per_user in facts.items()},
      "validation": {"tokens": val.tokens, "base_bpb": val.base_bpb},
      "decode": {"steps": evaluator.steps, "batch_size": settings.batch_size, "override_slots": slots},
      "primary_metric": "recall.<split>.exact_match (full answer, greedy decoding)",
      "definitions": DEFINITIONS,
      "strategies": strategies,
  }
  return report, seed_results


def run_evaluation(pre, users, runs, *, out_dir, eval_tokens: int | None, batch_size: int,
                   include_base: bool = True, extra: dict | None = None) -> dict:
  """Evaluate `runs` ({strategy: {seed: {uid: map}}}) and write the report files into `out_dir`.

  `extra` entries are added to the report's top level (the quickstart's stage times).
  """
  settings = EvalSettings(batch_size=batch_size, eval_tokens=eval_tokens, include_base=include_base)
  val = load_validation(pre, eval_tokens=eval_tokens, batch_rows=settings.val_batch_rows)
  start = time.perf_counter()
  report, seed_results = evaluate_memory(pre, users, runs, val, settings)
  report["eval_seconds"] = time.perf_counter() - start
  report.update(extra or {})
  paths = report_lib.write_report(report, out_dir)
  report_lib.write_predictions(seed_results, pathlib.Path(out_dir) / "predictions.jsonl")
  logging.info("[eval] report in %s", paths["markdown"].parent)
  return report
