"""Pretraining data: text sources, token shards and the validation split."""

from engram_jax.data.shards import DEFAULT_SHARD_TOKENS
from engram_jax.data.shards import SPLITS
from engram_jax.data.shards import hash_split
from engram_jax.data.shards import load_manifest
from engram_jax.data.shards import make_hash_split
from engram_jax.data.shards import open_shard
from engram_jax.data.shards import val_rule
from engram_jax.data.shards import write_shards
from engram_jax.data.sources import embedded_documents
from engram_jax.data.sources import file_documents
from engram_jax.data.sources import jsonl_documents
from engram_jax.data.sources import kjv_documents
from engram_jax.data.sources import parquet_documents
from engram_jax.data.sources import shakespeare_documents
from engram_jax.data.sources import txt_documents
