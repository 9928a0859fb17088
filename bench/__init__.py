"""Benchmarks of rpn_jax side by side with torchvision (not tests; see BENCHMARKS.md).

python -m bench.run_all      every CPU benchmark, results in bench/results/<machine>.json
python -m bench.gpu          the accelerator benchmark (no torch needed)
python -m bench.report       the tables of a results file (--write BENCHMARKS.md)
"""
