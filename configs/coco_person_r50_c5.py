"""`--config configs/coco_person_r50_c5.py` from a clone: the packaged recipe
rpn_jax/configs/coco_person_r50_c5.py, which an installed copy runs as `--config coco_person_r50_c5`.
"""

from rpn_jax.configs.coco_person_r50_c5 import get_config  # noqa: F401
