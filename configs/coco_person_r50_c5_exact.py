"""`--config configs/coco_person_r50_c5_exact.py` from a clone: the packaged recipe
rpn_jax/configs/coco_person_r50_c5_exact.py, which an installed copy runs as `--config coco_person_r50_c5_exact`.
"""

from rpn_jax.configs.coco_person_r50_c5_exact import get_config  # noqa: F401
