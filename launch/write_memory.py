"""Write per-user memory maps from a pretrained checkpoint.

  python -m launch.write_memory --workdir=runs/tiny --users=/path/to/users \\
      [--maps_dir=runs/tiny/memory] [--strategies=joint_opt,unembed_p,random] [--seeds=0,1,2]

Each user gets one safetensors file per strategy and seed, at
<maps_dir>/<strategy>/seed<seed>/<uid>.safetensors (see evals.map_store).
"""

import pathlib

from absl import app, flags, logging

from evals import map_store
from launch import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir with checkpoints/ and tokenizer/.")
_USERS = flags.DEFINE_string("users", None, "A user JSON file or a directory of them (u000.json, ...).")
_MAPS_DIR = flags.DEFINE_string("maps_dir", None, "Output directory (default <workdir>/memory).")
_STRATEGIES = flags.DEFINE_list("strategies", ["joint_opt", "unembed_p", "random"],
                                f"Writers to run, from {list(map_store.STRATEGIES)}.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Writing seeds (Joint OPT minibatch order).")
_MULTI_TRIGGER = flags.DEFINE_bool("multi_trigger", False, "Write every anticipated phrasing of a fact.")
_JOINT_MAX_STEPS = flags.DEFINE_integer("joint_max_steps", None, "Joint OPT step limit (default: its own).")
_JOINT_LR = flags.DEFINE_float("joint_learning_rate", None, "Joint OPT Adam learning rate (default: its own).")
_CONTINUATION = flags.DEFINE_enum(
    "continuation", "order", list(map_store.CONTINUATIONS),
    "Heads written at answer positions after the trigger: all, the highest n-gram order, or none.")
_VALUE_DTYPE = flags.DEFINE_enum("value_dtype", "bfloat16", list(map_store.VALUE_DTYPES),
                                 "Stored dtype of map values (training is float32).")
_KEEP_WEIGHT = flags.DEFINE_float("keep_weight", None,
                                  "Joint OPT keep-term weight (default 0: off; needs the run's data).")
_ANCHOR_WEIGHT = flags.DEFINE_float(
    "anchor_weight", None, "Joint OPT pull of each row towards its pretrained value (default 1e-4).")
_ANCHOR = flags.DEFINE_enum(
    "anchor", None, ["uniform", "reads"],
    "Joint OPT anchor scale per row: uniform (default), or by how often train text reads the row.")
_KEEP_TOKENS = flags.DEFINE_integer("keep_tokens", 262_144,
                                    "Train-split tokens for the keep term and --anchor=reads.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace map files that differ from the new ones.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "On an input or file error, show the full traceback.")



def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value or not _USERS.value:
    raise app.UsageError("--workdir and --users are required.")
  try:
    seeds = map_store.parse_seeds(_SEEDS.value)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  cli.run_reporting_errors(lambda: write(seeds), _TRACEBACK.value)


def write(seeds: list[int]) -> None:
  """Load the model and users named by the flags and write every map."""
  unknown = [s for s in _STRATEGIES.value if s not in map_store.STRATEGIES]
  if unknown or not _STRATEGIES.value:
    # Checked before the model loads, so a typo fails at once.
    raise ValueError(f"--strategies={','.join(_STRATEGIES.value)}: unknown or no strategies "
                     f"{unknown}; use some of {','.join(map_store.STRATEGIES)}.")
  from engram_jax.train.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top
  from engram_jax.users import load_users  # pylint: disable=g-import-not-at-top
  pre = load_pretrained(_WORKDIR.value)
  users = load_users(_USERS.value)
  maps_dir = _MAPS_DIR.value or str(pathlib.Path(_WORKDIR.value) / "memory")
  joint = map_store.joint_settings(_JOINT_MAX_STEPS.value, _JOINT_LR.value, _KEEP_WEIGHT.value,
                                   _ANCHOR_WEIGHT.value, _ANCHOR.value)
  map_store.write_maps(
      pre, users, strategies=_STRATEGIES.value, seeds=seeds, maps_dir=maps_dir,
      multi_trigger=_MULTI_TRIGGER.value, joint_settings=joint, continuation=_CONTINUATION.value,
      value_dtype=_VALUE_DTYPE.value, keep_text=map_store.keep_text_for(pre, joint, _KEEP_TOKENS.value),
      overwrite=_OVERWRITE.value)
  logging.info("[write] maps in %s", maps_dir)


if __name__ == "__main__":
  app.run(main)
