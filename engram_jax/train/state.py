"""Train state: parameters, optimiser state and step, created already sharded.

The state is a plain pytree `{"params", "opt_state", "step"}`; params are the
model's NNX parameters as a pure nested dict, so optax and orbax see ordinary
arrays. `TrainSetup.merge` rebuilds the NNX model from params inside jit.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from engram_jax.model import params as params_lib
from engram_jax.model.gpt import GPT
from engram_jax.train import mesh as mesh_lib


@dataclasses.dataclass(eq=False)
class TrainSetup:
  """Everything the compiled steps need besides the arrays themselves."""
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  abstract_state: dict
  state_shardings: dict

  def merge(self, params) -> GPT:
    """Rebuild the NNX model from a pure params dict (works under jit)."""
    return nnx.merge(self.graphdef, params)


def _key_name(key) -> str | None:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  return None


def _param_path(key_path) -> str:
  return "/".join(name for name in map(_key_name, key_path) if name is not None)


def opt_state_shardings(abstract_opt_state, param_specs: dict[str, tuple], mesh):
  """Give each optimiser leaf the sharding of the parameter it mirrors.

  A leaf mirrors a parameter when its dict-key path ends with that parameter's
  path and the shapes agree (Adam and Muon moments). Other leaves (step
  counters, factored statistics) are replicated.
  """
  def leaf_sharding(key_path, leaf):
    path = _param_path(key_path)
    for param_path, (shape, spec) in param_specs.items():
      if path.endswith(param_path) and tuple(np.shape(leaf)) == shape:
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_opt_state)


def init_state(cfg, table_rows, tx, seed: int) -> dict:
  """Build a fresh train state; run it under jit or jax.eval_shape."""
  model = GPT(cfg, engram_table_rows=table_rows, rngs=nnx.Rngs(seed))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def create_train_state(cfg, table_rows, tx, mesh, *, seed: int) -> tuple[dict, TrainSetup]:
  """Initialise the model and optimiser directly into their shardings."""
  init_fn = lambda: init_state(cfg, table_rows, tx, seed)
  abstract_state = jax.eval_shape(init_fn)
  shardings = state_shardings(abstract_state, mesh)
  graphdef = model_graphdef(cfg, table_rows)
  with jax.set_mesh(mesh):
    state = jax.jit(init_fn, out_shardings=shardings)()
  setup = TrainSetup(graphdef=graphdef, tx=tx, mesh=mesh, abstract_state=abstract_state,
                     state_shardings=shardings)
  return state, setup


def state_shardings(abstract_state: dict, mesh) -> dict:
  """Shardings of the whole train state from the parameter rules."""
  param_shardings = mesh_lib.tree_shardings(abstract_state["params"], mesh, _param_path)
  flat = jax.tree_util.tree_flatten_with_path(abstract_state["params"])[0]
  flat_shardings = jax.tree_util.tree_leaves(param_shardings)
  param_specs = {
      _param_path(key_path): (tuple(leaf.shape), sharding.spec)
      for (key_path, leaf), sharding in zip(flat, flat_shardings)
  }
  # Longest paths first, so "blocks/1/engram/table" wins over a shorter suffix.
  param_specs = dict(sorted(param_specs.items(), key=lambda kv: -len(kv[0])))
  return {
      "params": param_shardings,
      "opt_state": opt_state_shardings(abstract_state["opt_state"], param_specs, mesh),
      "step": NamedSharding(mesh, P()),
  }


def model_graphdef(cfg, table_rows) -> nnx.GraphDef:
  """The GPT's static structure, for nnx.merge with a params dict."""
  return nnx.graphdef(nnx.eval_shape(lambda: GPT(cfg, engram_table_rows=table_rows, rngs=nnx.Rngs(0))))


def abstract_params(cfg, table_rows) -> dict:
  """Parameter shapes as a pure dict of ShapeDtypeStructs; allocates nothing."""
  model = nnx.eval_shape(lambda: GPT(cfg, engram_table_rows=table_rows, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def count_params(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))


def param_group_sizes(params) -> dict[str, int]:
  """Parameter count per optimiser group, for the start-up log."""
  sizes: dict[str, int] = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    group = params_lib.param_group(_param_path(key_path))
    sizes[group] = sizes.get(group, 0) + int(np.prod(np.shape(leaf)))
  return sizes
