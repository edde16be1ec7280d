"""Evaluate per-user memory maps: print a table and write report.json, report.md and a plot.

  python -m launch.eval_memory --workdir=runs/tiny --users=/path/to/users \\
      [--maps_dir=runs/tiny/memory] [--out_dir=runs/tiny/eval] [--eval_tokens=16384]

Reads the maps that launch.write_memory wrote (<maps_dir>/<strategy>/seed<k>/<uid>.safetensors)
and measures, per strategy over its seeds: recall on the written prompts and on
held-out questions (full-answer exact match first, first-token rank second),
Δbpb on validation text, leakage between users and the content-swap control,
storage and write time. `predictions.jsonl` in the output directory contains
every decoded probe.
"""

import pathlib

from absl import app, flags

from evals import map_store, memory_eval, report as report_lib
from launch import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir with checkpoints/ and tokenizer/.")
_USERS = flags.DEFINE_string("users", None, "The user JSON file or directory the maps were written from.")
_MAPS_DIR = flags.DEFINE_string("maps_dir", None, "Map directory (default <workdir>/memory).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Report directory (default <workdir>/eval).")
_STRATEGIES = flags.DEFINE_list("strategies", None, "Strategies to evaluate (default: all found).")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds to evaluate (default: all found).")
_EVAL_TOKENS = flags.DEFINE_integer("eval_tokens", None,
                                    "Validation target tokens for Δbpb (default: the whole split).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Probes per forward pass.")
_NO_BASE = flags.DEFINE_bool("skip_base", False, "Leave out the bare-model reference row.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "On an input or file error, show the full traceback.")



def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value or not _USERS.value:
    raise app.UsageError("--workdir and --users are required.")
  try:
    seeds = None if _SEEDS.value is None else map_store.parse_seeds(_SEEDS.value)
  except ValueError as error:
    raise app.UsageError(str(error)) from error

  def body():
    # Checked before the model loads, so a bad flag fails at once.
    memory_eval.EvalSettings(batch_size=_BATCH_SIZE.value, eval_tokens=_EVAL_TOKENS.value)
    evaluate(seeds)

  cli.run_reporting_errors(body, _TRACEBACK.value)


def evaluate(seeds: list[int] | None) -> None:
  """Load the model, users and maps named by the flags, evaluate them and print the table."""
  from engram_jax.train.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top
  from engram_jax.users import load_users  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(_WORKDIR.value)
  pre = load_pretrained(str(workdir))
  users = load_users(_USERS.value)
  maps_dir = _MAPS_DIR.value or workdir / "memory"
  runs = map_store.load_run_maps(pre, maps_dir, users, strategies=_STRATEGIES.value, seeds=seeds)
  memory_eval.check_map_labels(runs, maps_dir)
  report = memory_eval.run_evaluation(
      pre, users, runs, out_dir=_OUT_DIR.value or workdir / "eval", eval_tokens=_EVAL_TOKENS.value,
      batch_size=_BATCH_SIZE.value, include_base=not _NO_BASE.value)
  print(report_lib.format_table(report))


if __name__ == "__main__":
  app.run(main)
