"""Where generated data and derived files (synthetic sets, gt jsons) live."""

import os


def cache_root() -> str:
  """`$RPN_JAX_CACHE`, else `~/.cache/rpn_jax` (not created here)."""
  root = os.environ.get("RPN_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "rpn_jax"
  )
  return os.path.abspath(root)
