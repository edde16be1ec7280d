"""Hashed N-gram addressing for the Engram tables.

`build_layout` (or `layout_from_config`) fixes the multipliers, head primes
and table offsets. `hash_rows_np` (host input pipeline) and `hash_rows_jax`
(on device, jit-able with x64 off) turn canonical ids [B, T] into identical
int32 global rows [L, B, T, G].
"""

from engram_jax.hashing.jax_hash import (
    canonicalize_jax, check_ids_jax, check_jax_layout, hash_rows_jax, prepare_ids_jax)
from engram_jax.hashing.layout import (
    HashLayout, build_layout, consecutive_primes, is_prime, layout_from_config)
from engram_jax.hashing.numpy_hash import (
    canonicalize_np, hash_rows_np, validate_ids_np, validate_reset_id, validate_salt)

__all__ = [
    "HashLayout",
    "build_layout",
    "canonicalize_jax",
    "canonicalize_np",
    "check_ids_jax",
    "check_jax_layout",
    "consecutive_primes",
    "hash_rows_jax",
    "hash_rows_np",
    "is_prime",
    "layout_from_config",
    "prepare_ids_jax",
    "validate_ids_np",
    "validate_reset_id",
    "validate_salt",
]
