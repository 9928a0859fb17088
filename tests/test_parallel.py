"""Data parallelism and mixed precision give the single-device float32 step."""

import os
import subprocess
import sys

import jax
import numpy as np

from rpn_jax import setup_model
from rpn_jax import train_lib
from tests.test_reliability import _batch, _tiny_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TWO_DEVICE_SCRIPT = """
import jax, numpy as np
from rpn_jax import parallel, setup_model, train_lib
from tests.test_reliability import _batch, _tiny_state
from tests.tiny_config import get_config
assert jax.device_count() == 2, jax.devices()
config = get_config()
config.model.norm = "gn"  # per-device BatchNorm statistics would differ by design
model, tx, state = _tiny_state(config)
state = jax.device_get(state)  # host copy: each run below donates its own
fn = train_lib.make_train_step(config, model, tx, setup_model.model_anchors(config))
batch = _batch(config, [10, 10, 60, 90])
batch["boxes"][1::2, 0] = [40, 20, 100, 120]
outs = {}
for n in (1, 2):
  mesh = parallel.data_mesh(jax.devices()[:n])
  step = parallel.jit_data_parallel(fn, mesh)
  new, metrics = step(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh))
  outs[n] = (jax.device_get(new.params), jax.device_get(metrics))
p1, m1 = outs[1]
p2, m2 = outs[2]
print("loss", m1["total"], m2["total"])
assert abs(m1["total"] - m2["total"]) <= 1e-6 * abs(m1["total"]) + 1e-7
for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print("OK")
"""


def test_two_devices_match_one_device_step():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run(
      [sys.executable, "-c", _TWO_DEVICE_SCRIPT],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
      env=env,
  )
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_bfloat16_losses_track_float32(tiny):
  batch = _batch(tiny, [10, 10, 60, 90])
  losses = {}
  for dtype in ("float32", "bfloat16"):
    tiny.model.dtype = dtype
    model, tx, state = _tiny_state(tiny)
    step = jax.jit(
        train_lib.make_train_step(
            tiny, model, tx, setup_model.model_anchors(tiny)
        )
    )
    _, metrics = step(state, batch)
    losses[dtype] = {
        k: float(metrics[k]) for k in ("objectness", "box", "total")
    }
    assert all(
        x.dtype == np.float32 for x in jax.tree_util.tree_leaves(state.params)
    )
  for k in ("objectness", "box", "total"):
    np.testing.assert_allclose(
        losses["bfloat16"][k], losses["float32"][k], rtol=0.05
    )
