"""`--config configs/coco_person_r50_fpn.py` from a clone: the packaged recipe
rpn_jax/configs/coco_person_r50_fpn.py, which an installed copy runs as `--config coco_person_r50_fpn`.
"""

from rpn_jax.configs.coco_person_r50_fpn import get_config  # noqa: F401
