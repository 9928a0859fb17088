"""A convolution's kernel gradient on XLA's CPU backend, in the formulation
measured fastest for its shape on this machine.

dL/dkernel [kh, kw, I, O] of y = conv(x [B, H, W, I], kernel, stride,
padding) given g = dL/dy [B, H', W', O] is a contraction over B * H' * W'.
XLA's CPU backend runs it as a convolution whose speed depends strongly on
the shape and on the processor: on a 2-core AMD EPYC, ResNet-18's 7x7 stem
at 384 px, batch 4, takes 83 ms that way and 33 ms as one such convolution
per image; layer4's 3x3 convolution takes 14 ms that way and 8 ms as nine
matmuls. The formulations (all give the same values up to float32 rounding):

- "xla": jax's own transpose of the convolution.
- "windows" / "gradient_first": kh*kw matmuls, window (i, j) of the padded
  input against g; a matmul over pixels needs one operand transposed in
  memory: each window ("windows") or g once ("gradient_first").
- "xla_per_image" / "gradient_first_per_image": that method on each image,
  summed.

`method_for` picks one per shape: the static rule `rule_method` for small
convolutions, off the CPU or in a multi-process job, otherwise the fastest
of them all, timed on random data (as cuDNN's benchmark mode does) when a
step is first traced, if it beats the rule's choice by more than 10%.
The choices are kept per processor, jax version and shape in
$RPN_JAX_CACHE/conv_kernel_grads.json (else ~/.cache/rpn_jax/...), so only
the first run on a machine pays the timing (20-30 s for ResNet-18 at
384 px) and later runs trace the same program. RPN_JAX_CONV_TUNING=0 turns
the timing off (the rule then decides).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rpn_jax.data.cache import cache_root

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
BASE_METHODS = ("xla", "windows", "gradient_first")
# Convolutions below this many kernel-gradient FLOPs keep `rule_method`:
# timing them would cost more than it could save.
TUNING_MIN_FLOPS = 1e9
# A timed formulation replaces the rule's choice only when the rule's is
# slower than it by more than this factor.
RULE_MARGIN = 1.1
# Per-image variants are tried for batches up to this size.
_MAX_PER_IMAGE_BATCH = 8
_TIMED_ROUNDS = 5

_chosen: dict[str, str] = {}
_CACHE_FILE = "conv_kernel_grads.json"


def conv(
    x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int
) -> jnp.ndarray:
  """x [B, H, W, I] * kernel [kh, kw, I, O], symmetric zero padding -> [B, H', W', O]."""
  pad = ((padding, padding), (padding, padding))
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), pad, dimension_numbers=_DIMENSIONS
  )


def _xla(x, kernel, g, stride, padding):
  return jax.vjp(lambda k: conv(x, k, stride, padding), kernel)[1](g)[0]


def _windows(
    xp: jnp.ndarray,
    out_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    stride: int,
) -> list[jnp.ndarray]:
  """The kh*kw strided windows [B, H', W', I] of a padded input that tap (i, j) multiplies."""
  out_h, out_w = out_hw
  return [
      xp[
          :,
          i : i + stride * (out_h - 1) + 1 : stride,
          j : j + stride * (out_w - 1) + 1 : stride,
      ]
      for i in range(kernel_hw[0])
      for j in range(kernel_hw[1])
  ]


def _matmuls(x, kernel, g, stride, padding, gradient_first):
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  windows = _windows(xp, g.shape[1:3], kernel.shape[:2], stride)
  if gradient_first:
    taps = [
        jnp.einsum("bhwd,bhwc->dc", g, w, preferred_element_type=jnp.float32)
        for w in windows
    ]
    grad = jnp.swapaxes(jnp.stack(taps), 1, 2)
  else:
    grad = jnp.stack(
        [
            jnp.einsum(
                "bhwc,bhwd->cd", w, g, preferred_element_type=jnp.float32
            )
            for w in windows
        ]
    )
  return grad.reshape(kernel.shape).astype(kernel.dtype)


_BASE: dict[str, Callable] = {
    "xla": _xla,
    "windows": functools.partial(_matmuls, gradient_first=False),
    "gradient_first": functools.partial(_matmuls, gradient_first=True),
}


def kernel_grad(
    method: str,
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    g: jnp.ndarray,
    stride: int,
    padding: int,
) -> jnp.ndarray:
  """dL/dkernel [kh, kw, I, O] by `method` (one of `methods(batch)`)."""
  fn = _BASE[method.removesuffix("_per_image")]
  if not method.endswith("_per_image"):
    return fn(x, kernel, g, stride, padding)
  grads = [
      fn(x[i : i + 1], kernel, g[i : i + 1], stride, padding).astype(
          jnp.float32
      )
      for i in range(x.shape[0])
  ]
  return functools.reduce(jnp.add, grads).astype(kernel.dtype)


def methods(batch: int) -> tuple[str, ...]:
  """The formulations `method_for` chooses among for a batch of `batch` images."""
  if 1 < batch <= _MAX_PER_IMAGE_BATCH:
    return BASE_METHODS + ("xla_per_image", "gradient_first_per_image")
  return BASE_METHODS


def rule_method(
    pixels: int, in_channels: int, out_channels: int, taps: int
) -> str:
  """The untimed choice: "xla", "gradient_first" or "windows".

  `pixels` = B * H' * W' of the output. From ResNet layers on 2 cores:
  XLA's own kernel gradient for narrow layers (I * O <= 64 * 64); for wider
  ones the per-tap matmuls, transposing g once when the kh*kw window
  transposes would move more data than g plus the kernel-sized result
  (transposed bytes counted 3x a plain copy's).
  """
  if in_channels * out_channels <= 64 * 64:
    return "xla"
  windows_cost = 3 * taps * pixels * in_channels
  gradient_cost = (
      3 * pixels * out_channels
      + taps * pixels * in_channels
      + 3 * taps * in_channels * out_channels
  )
  return "gradient_first" if gradient_cost < windows_cost else "windows"


def tuning_enabled() -> bool:
  return os.environ.get("RPN_JAX_CONV_TUNING", "1") != "0"


def _time_methods(
    candidates: tuple[str, ...],
    x_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    g_shape: tuple[int, ...],
    stride: int,
    padding: int,
    dtype: np.dtype,
) -> dict[str, float]:
  """Median seconds of each candidate on random data on the CPU, calls
  alternating over `_TIMED_ROUNDS` rounds after one warm-up each."""
  with jax.ensure_compile_time_eval():
    device = jax.devices("cpu")[0]
    rng = np.random.default_rng(0)
    args = [
        jax.device_put(rng.standard_normal(shape).astype(dtype), device)
        for shape in (x_shape, kernel_shape, g_shape)
    ]
    compiled = {}
    for method in candidates:
      fn = functools.partial(
          kernel_grad, method, stride=stride, padding=padding
      )
      compiled[method] = jax.jit(fn).lower(*args).compile()
      jax.block_until_ready(compiled[method](*args))
    times: dict[str, list[float]] = {m: [] for m in candidates}
    for _ in range(_TIMED_ROUNDS):
      for method, run in compiled.items():
        start = time.perf_counter()
        jax.block_until_ready(run(*args))
        times[method].append(time.perf_counter() - start)
  return {m: float(np.median(t)) for m, t in times.items()}


@functools.cache
def processor_name() -> str:
  """The CPU's model name from /proc/cpuinfo, else what `platform` knows
  (read once per process)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _cache_path() -> str:
  return os.path.join(cache_root(), _CACHE_FILE)


def _load_choices() -> dict[str, str]:
  """The saved choices, or none when the file is missing or unreadable (it
  only ever costs a re-timing: every method gives the same gradient)."""
  try:
    with open(_cache_path()) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return {}
  return saved if isinstance(saved, dict) else {}


def _save_choice(key: str, method: str) -> None:
  """Adds one choice to the file (written whole, then renamed into place)."""
  choices = {**_load_choices(), key: method}
  try:
    os.makedirs(cache_root(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_root(), suffix=".json")
    with os.fdopen(fd, "w") as f:
      json.dump(choices, f, indent=0, sort_keys=True)
    os.replace(tmp, _cache_path())
  except OSError as error:
    logging.warning("could not save %s: %s", _cache_path(), error)


def method_for(
    x_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    g_shape: tuple[int, ...],
    stride: int,
    padding: int,
    dtype: np.dtype,
) -> str:
  """The formulation for this convolution on the CPU (see the module doc)."""
  kh, kw, in_channels, out_channels = kernel_shape
  pixels = int(np.prod(g_shape[:3]))
  rule = rule_method(pixels, in_channels, out_channels, kh * kw)
  flops = 2 * pixels * kh * kw * in_channels * out_channels
  if (
      flops < TUNING_MIN_FLOPS
      or not tuning_enabled()
      or jax.default_backend() != "cpu"
      or jax.process_count() > 1
  ):
    # (Processes that timed on their own could trace different programs.)
    return rule
  dtype = np.dtype(dtype)
  key = (
      f"{processor_name()}|jax {jax.__version__}|x{list(x_shape)} "
      f"kernel{list(kernel_shape)} stride {stride} padding {padding} "
      f"{dtype.name}"
  )
  candidates = methods(x_shape[0])
  if key not in _chosen:
    saved = _load_choices().get(key)
    if saved in candidates:
      _chosen[key] = saved
    else:
      seconds = _time_methods(
          candidates,
          tuple(x_shape),
          tuple(kernel_shape),
          tuple(g_shape),
          stride,
          padding,
          dtype,
      )
      fastest = min(seconds, key=seconds.get)
      # The rule unless something is clearly faster: near-ties are timing
      # noise, and the rule's choice runs fewer operations.
      if seconds[rule] > RULE_MARGIN * seconds[fastest]:
        _chosen[key] = fastest
      else:
        _chosen[key] = rule
      _save_choice(key, _chosen[key])
      logging.info(
          "conv kernel gradient x%s kernel%s stride %d: %s (%s)",
          list(x_shape),
          list(kernel_shape),
          stride,
          _chosen[key],
          ", ".join(f"{m} {t * 1e3:.1f} ms" for m, t in seconds.items()),
      )
  return _chosen[key]


def on_cpu(
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    g: jnp.ndarray,
    stride: int,
    padding: int,
) -> jnp.ndarray:
  """dL/dkernel [kh, kw, I, O] in the formulation `method_for` picks."""
  method = method_for(x.shape, kernel.shape, g.shape, stride, padding, x.dtype)
  return kernel_grad(method, x, kernel, g, stride, padding)
