"""`--config configs/coco_folder.py` from a clone: the packaged recipe
rpn_jax/configs/coco_folder.py, which an installed copy runs as `--config coco_folder`.
"""

from rpn_jax.configs.coco_folder import get_config  # noqa: F401
