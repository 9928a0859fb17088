"""The packaged recipes: one module per recipe, `get_config()` each.

A name given to `--config` (`default`, `coco_person_r50_c5`, ...) is one of
these files; `configs/<name>.py` in a clone points here.
"""
