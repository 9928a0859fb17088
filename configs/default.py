"""`--config configs/default.py` from a clone: the packaged recipe
rpn_jax/configs/default.py, which an installed copy runs as `--config default`.
"""

from rpn_jax.configs.default import get_config  # noqa: F401
