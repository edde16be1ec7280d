"""Per-user memory: override maps, their files, composition and batching."""

from engram_jax.memory.composition import (
    CompositionReport, PairOverlap, compose, overlap, stack_overrides)
from engram_jax.memory.map_files import (
    FORMAT, InvalidMapFileError, load_map, map_to_bytes, save_map)
from engram_jax.memory.maps import (
    MapFingerprintError, OverrideMap, check_map_fits, make_map, model_fingerprint, storage_bytes)

__all__ = [
    "FORMAT",
    "CompositionReport",
    "InvalidMapFileError",
    "MapFingerprintError",
    "OverrideMap",
    "PairOverlap",
    "check_map_fits",
    "compose",
    "load_map",
    "make_map",
    "map_to_bytes",
    "model_fingerprint",
    "overlap",
    "save_map",
    "stack_overrides",
    "storage_bytes",
]
