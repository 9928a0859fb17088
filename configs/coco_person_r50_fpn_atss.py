"""`--config configs/coco_person_r50_fpn_atss.py` from a clone: the packaged recipe
rpn_jax/configs/coco_person_r50_fpn_atss.py, which an installed copy runs as `--config coco_person_r50_fpn_atss`.
"""

from rpn_jax.configs.coco_person_r50_fpn_atss import get_config  # noqa: F401
