"""Device mesh and sharding rules for pretraining.

The mesh has three axes: `data` and `fsdp` split the batch, `fsdp` also splits
the dense weights, and `table` splits the Engram table rows. The batch is split
over all three axes so no device idles; the Engram lookup sums each table
shard's rows across the `table` axis (see engram_jax.model.lookup).
"""

import math
import re

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "table")
BATCH_AXES = AXES


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolve the config's axis sizes (one may be -1) against the device count."""
  sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.table)]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1; got data/fsdp/table = {sizes}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"Mesh axis sizes must be positive or -1; got data/fsdp/table = {sizes}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f"{num_devices} devices do not divide into mesh axes {sizes}; pick sizes whose "
          f"product divides {num_devices}.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"Mesh data x fsdp x table = {sizes} uses {math.prod(sizes)} devices but "
        f"{num_devices} are present; set --config.mesh.data=-1 to fill the rest.")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """Build the (data, fsdp, table) mesh over all devices (all processes)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  mesh = jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
  logging.info("[mesh] data=%d fsdp=%d table=%d over %d devices", *shape, len(devices))
  return mesh


def batch_size_per_shard(global_rows: int, mesh: Mesh) -> int:
  """Rows per batch shard; raise when the batch does not split evenly."""
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if global_rows % shards:
    raise ValueError(
        f"train.device_batch_size={global_rows} rows do not divide over {shards} batch shards "
        f"(mesh {dict(mesh.shape)}); use a multiple of {shards}.")
  return global_rows // shards


def param_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Partition spec of one parameter.

  Engram tables split their rows over `table`. Dense weights of rank 2 split
  their first axis divisible by the fsdp size over `fsdp`; other parameters are
  replicated.
  """
  if re.search(r"/engram/table$", path):
    if shape[0] % mesh.shape["table"]:
      raise ValueError(
          f"{path} has {shape[0]} rows, not a multiple of mesh.table={mesh.shape['table']}; "
          "set engram.table_shards to the table axis size so rows are padded.")
    return P("table", None)
  fsdp = mesh.shape["fsdp"]
  if fsdp > 1 and len(shape) == 2:
    for axis, size in enumerate(shape):
      if size % fsdp == 0:
        spec = [None, None]
        spec[axis] = "fsdp"
        return P(*spec)
    logging.warning("[mesh] %s %s does not divide by fsdp=%d; replicated", path, shape, fsdp)
  return P()


def tree_shardings(tree, mesh: Mesh, path_fn):
  """NamedShardings for every leaf of a pytree of arrays or shape structs."""
  def leaf_sharding(key_path, leaf):
    return NamedSharding(mesh, param_spec(path_fn(key_path), tuple(np.shape(leaf)), mesh))
  return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def batch_shardings(mesh: Mesh, with_engram: bool) -> dict[str, NamedSharding]:
  """Shardings of one optimiser step's batch: [A, B, T] and [A, L, B, T, G]."""
  out = {
      "inputs": NamedSharding(mesh, P(None, BATCH_AXES, None)),
      "targets": NamedSharding(mesh, P(None, BATCH_AXES, None)),
  }
  if with_engram:
    out["engram_rows"] = NamedSharding(mesh, P(None, None, BATCH_AXES, None, None))
  return out


def eval_batch_shardings(mesh: Mesh, with_engram: bool) -> dict[str, NamedSharding]:
  """Shardings of one validation batch: [B, T] and [L, B, T, G]."""
  out = {
      "inputs": NamedSharding(mesh, P(BATCH_AXES, None)),
      "targets": NamedSharding(mesh, P(BATCH_AXES, None)),
  }
  if with_engram:
    out["engram_rows"] = NamedSharding(mesh, P(None, BATCH_AXES, None, None))
  return out
