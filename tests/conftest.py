"""Pytest setup shared by every test module."""

import jax

# Simulate 8 CPU devices so the sharded-table tests can build 1x8 and 2x4
# meshes. The option only takes effect before the first JAX computation, and
# pytest imports this file before any test module.
jax.config.update("jax_num_cpu_devices", 8)
