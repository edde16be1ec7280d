"""Tokenise the configured corpus into train/val token shards.

  python -m launch.prepare_data --config=configs/tiny.py --workdir=DIR

Trains the tokenizer first when tokenizer.path (default <workdir>/tokenizer)
has none, then writes shards to data.dir (default <workdir>/data). A finished
data directory built from the same tokenizer, sources and split rule is
reused as it is.
"""

import time

from absl import app, flags
from ml_collections import config_flags

from engram_jax.data.prepare import format_summary, prepare
from launch import train_tokenizer


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  start = time.perf_counter()
  cfg = flags.FLAGS.config
  out_dir = prepare(
      cfg, flags.FLAGS.workdir, corpus=train_tokenizer.corpus_from_flags(cfg),
      overwrite=flags.FLAGS.overwrite)
  print(format_summary(out_dir, time.perf_counter() - start))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py[:variant].")
  flags.mark_flag_as_required("config")
  train_tokenizer.define_corpus_flags()
  app.run(main)
