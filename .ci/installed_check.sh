#!/usr/bin/env bash
# The package as a user installs it: a fresh venv, `pip install .` (not
# editable), and rpn-train / rpn-evaluate / rpn-predict on the packaged default
# recipe, shrunk to seconds, run from a folder outside the clone.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$repo"
cd "$work"
export RPN_JAX_CACHE="$work/cache"
shrink=(--config.data.synthetic.num_train=16 --config.data.synthetic.num_val=8
        --config.train.epochs=1 --config.train.batch_size=4
        --config.eval.batch_size=4 "--config.eval.tta_scales=(1.0,)"
        --config.eval.hflip_tta=False)
"$work/venv/bin/rpn-train" --config default "${shrink[@]}" --workdir run
"$work/venv/bin/rpn-evaluate" --ckpt run --output_dir eval \
  "--config.eval.tta_scales=(1.0,)" --config.eval.hflip_tta=False
test -s eval/metrics.json
"$work/venv/bin/rpn-predict" --ckpt run --images "$RPN_JAX_CACHE/synthetic*/val/*.jpg" \
  --output_dir predict "--config.eval.tta_scales=(1.0,)" --config.eval.hflip_tta=False
test -s predict/detections.json
echo "installed package: rpn-train, rpn-evaluate and rpn-predict ran from $work"
