"""Per-user memory: fact rows, writers (RANDOM, UNEMBED_P, OPT, Joint OPT) and override maps."""

from engram_jax.memory.composition import (
    CompositionReport, PairOverlap, compose, overlap, stack_overrides)
from engram_jax.memory.facts import NO_ROW, FactExample, encode_facts, locate_rows, order_heads
from engram_jax.memory.joint_opt import (
    JointOptSettings, JointOptStats, managed_rows, write_joint_opt, write_joint_opt_users)
from engram_jax.memory.map_files import (
    FORMAT, InvalidMapFileError, load_map, map_to_bytes, save_map)
from engram_jax.memory.maps import (
    MapFingerprintError, OverrideMap, check_map_fits, make_map, model_fingerprint, storage_bytes)
from engram_jax.memory.writers import OptSettings, write_opt, write_random, write_unembed_p

__all__ = [
    "NO_ROW",
    "FactExample",
    "JointOptSettings",
    "JointOptStats",
    "OptSettings",
    "encode_facts",
    "locate_rows",
    "managed_rows",
    "order_heads",
    "write_joint_opt",
    "write_joint_opt_users",
    "write_opt",
    "write_random",
    "write_unembed_p",
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
