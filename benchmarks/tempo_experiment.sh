#!/usr/bin/env bash
# The tempo experiment: does the temporal pyramid help? TPN R50 8x8 vs the slow-only R50 8x8
# baseline, identical data, recipe, budget and seed, with the unchanged `tpn train` / `tpn test`.
# CONFIGS="tempo_tpn_r50_8x8 tempo_tpn_tsm_r50_1x1x8" runs TPN on a TSM ResNet-50 beside the 3D one.
#   bash benchmarks/tempo_experiment.sh            # on a GPU machine (about 8 minutes on an H100)
# Env: ROOT (dataset folder), OUT (work dirs), WORKERS (loader/generator processes), EPOCHS, SEED,
# CLASSES / VPC / TVPC (classes, videos a class, test videos a class), CONFIGS (which runs), SETS (extra --set)
set -euo pipefail
ROOT=${ROOT:-data/tempo}
OUT=${OUT:-work_dirs/tempo}
WORKERS=${WORKERS:-14}
EPOCHS=${EPOCHS:-30}
SEED=${SEED:-0}
CLASSES=${CLASSES:-24}
VPC=${VPC:-125}
TVPC=${TVPC:-30}
if [ ! -f "$ROOT/test.txt" ]; then
  # 24 classes (8 directions x slow/medium/fast), 100 train + 25 val videos a class
  tpn data synth "$ROOT" --classes "$CLASSES" --videos-per-class "$VPC" --frames 96 --seed 0 --workers "$WORKERS" --overwrite
  # a held-out test split: 30 more videos a class from other seeds (unseen speed/appearance draws)
  tpn data synth "$ROOT/test_set" --classes "$CLASSES" --videos-per-class "$TVPC" --frames 96 --seed 1 --workers "$WORKERS" --overwrite
  cat "$ROOT/test_set/train.txt" "$ROOT/test_set/val.txt" | sed 's#^#test_set/#' > "$ROOT/test.txt"
fi
CONFIGS=${CONFIGS:-tempo_tpn_r50_8x8 tempo_slowonly_r50_8x8}
for cfg in $CONFIGS; do
  sets=(--set "data.root=$ROOT" --set "data.train_list=$ROOT/train.txt" --set "data.val_list=$ROOT/val.txt"
        --set "data.test_list=$ROOT/test.txt" --set "data.label_map=$ROOT/labels.txt"
        --set "data.num_workers=$WORKERS" --set "train.epochs=$EPOCHS" --set "train.seed=$SEED" ${SETS:-})
  tpn train "$cfg" --work-dir "$OUT/$cfg" --overwrite "${sets[@]}"
  tpn test "$cfg" --checkpoint "$OUT/$cfg/best.pth" --work-dir "$OUT/$cfg/test" "${sets[@]}"
done
python3 benchmarks/tempo_summary.py "$OUT" $CONFIGS
