"""The command-line programs (`rpn-train`, `rpn-evaluate`, ...); `train.py`
and friends in a clone call the same `run()`."""
