"""Data parallelism over every local device with `jax.sharding`.

The global batch is split along a one-axis `data` mesh, the train state is
replicated, and `jax.jit` inserts the gradient all-reduce itself; on a single
device all of this is the identity.
"""

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  devices = jax.local_devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a host batch with its leading axis split over the `data` axis.

  The batch size must be a multiple of the device count.
  """
  n = mesh.devices.size
  for name, value in batch.items():
    if value.shape[0] % n:
      raise ValueError(
          f"batch size {value.shape[0]} of {name!r} is not a multiple of the "
          f"{n} devices; set train.batch_size / eval.batch_size accordingly")
  return jax.device_put(batch, NamedSharding(mesh, P("data")))


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
