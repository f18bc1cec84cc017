#!/usr/bin/env bash
# From slides and one label per slide to a checkpoint the widget opens, on generated data:
# 12 synthetic slides (half with lesions) and labels.csv, cached features, patient-wise
# 3-fold A-MIL training on the features, and classification of one slide from its cache.
# Usage: bash scripts/slide_labels_demo.sh [OUT_DIR] [ENCODER [WEIGHTS]]
#   ENCODER defaults to "tiny" with seeded random weights (no download, a no-pretraining
#   baseline); give e.g. "uni ~/models/uni" or "resnet50_trunc resnet50.safetensors" to
#   use weights you downloaded yourself (`histattn encoders` says from where).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/slide-labels-demo}"
encoder="${2:-tiny}"
weights=()
[ -n "${3:-}" ] && weights=(--encoder-weights "$3")
[ -x .venv/bin/histattn ] || bash scripts/install.sh all
hist=.venv/bin/histattn
mkdir -p "$out/slides"
echo "slide,label,patient" > "$out/labels.csv"
for i in $(seq 0 11); do
  slide="$out/slides/s$i.tiff"
  if [ $((i % 2)) -eq 0 ]; then lesions=$((1 + (i % 4 == 0))); label=lesion; else lesions=0; label=benign; fi
  [ -f "$slide" ] || "$hist" synth "$slide" --size 1024x1024 --mpp 1.0 --lesions "$lesions" \
      --lesion-radius 110 --lookalikes 0 --seed $((100 + i)) >/dev/null
  echo "slides/s$i.tiff,$label,p$i" >> "$out/labels.csv"
done
"$hist" features "$out/labels.csv" --encoder "$encoder" "${weights[@]}" --out "$out/features"
"$hist" train --labels "$out/labels.csv" --features "$out/features" --model amil \
    --folds 3 --epochs 30 --lr 3e-3 --patience 0 --batch-size 4 --out "$out/run"
"$hist" classify "$out/slides/s0.tiff" --checkpoint "$out/run/fold-1/model.safetensors" \
    --features "$out/features" --out "$out/classify-s0"
echo "Checkpoint for the widget (Open checkpoint file...): $out/run/fold-1/model.safetensors"
