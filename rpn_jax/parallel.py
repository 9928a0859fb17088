"""Data parallelism over every device with `jax.sharding`.

The global batch is split along a one-axis `data` mesh, the train state is
replicated, and `jax.jit` inserts the gradient all-reduce itself; on a single
device all of this is the identity. On several hosts (a TPU slice, a GPU
cluster; after `jax.distributed.initialize()`) each process feeds its own
share of the global batch and the mesh spans every process's devices.
"""

from typing import Any
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(
    batch: dict[str, np.ndarray], mesh: Mesh
) -> dict[str, jax.Array]:
  """This process's share of a global batch -> global arrays split over the
  `data` axis. The global batch size must be a multiple of the device count."""
  n = mesh.devices.size
  sharding = NamedSharding(mesh, P("data"))
  out = {}
  for name, value in batch.items():
    if (value.shape[0] * jax.process_count()) % n:
      raise ValueError(
          f"batch size {value.shape[0] * jax.process_count()} of {name!r} is "
          f"not a multiple of the {n} devices; set train.batch_size / "
          "eval.batch_size accordingly"
      )
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out


def gather(tree: Any) -> Any:
  """Every process's share of data-sharded outputs, on the host (numpy)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def jit_data_parallel(fn: Callable, mesh: Mesh) -> Callable:
  """jit of `fn(state, batch) -> (state, outputs)` with the state replicated
  and the batch sharded; outputs come back replicated."""
  replicated = NamedSharding(mesh, P())
  return jax.jit(
      fn,
      in_shardings=(replicated, NamedSharding(mesh, P("data"))),
      out_shardings=replicated,
      donate_argnums=(0,),
  )


def jit_sharded_map(fn: Callable, mesh: Mesh) -> Callable:
  """jit of `fn(variables, batch) -> outputs` with the variables replicated,
  and the batch and every output split along the `data` axis."""
  return jax.jit(
      fn,
      in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
      out_shardings=NamedSharding(mesh, P("data")),
  )
