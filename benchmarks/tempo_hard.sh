#!/usr/bin/env bash
# The harder tempo experiment: TPN R50 8x8 vs slow-only R50 8x8, 3 training seeds each, on the
# synthetic tempo set made harder (tempos 1.5x apart, 3 distractor objects, 64-frame videos),
# with the unchanged `tpn train` / `tpn test`; then benchmarks/summarise_tempo.py writes
# $OUT/summary.json (per-seed 30-view top-1, tempo-pair accuracy, validation curves; means and
# standard deviations) and $OUT/curves.png.
#   bash benchmarks/tempo_hard.sh                 # one H100, 15 loader workers: the 6 runs take about 9 minutes
#   bash benchmarks/tempo_hard.sh --tiny          # a few CPU minutes: checks the pipeline only
# Env: ROOT (dataset), OUT (work dirs), WORKERS, EPOCHS, SEEDS, CLASSES, VPC / TVPC (train+val /
# test videos a class), FRAMES, RATIO, DISTRACTORS, MODELS (configs), SETS (extra --set arguments),
# TPN (the command).
set -euo pipefail
if [ "${1:-}" = "--tiny" ]; then  # 4 classes, a few videos, 2 epochs, 1/8-width models
  : "${ROOT:=work_dirs/tempo_hard_tiny/data}" "${OUT:=work_dirs/tempo_hard_tiny}" "${WORKERS:=1}" "${EPOCHS:=2}"
  : "${CLASSES:=4}" "${VPC:=5}" "${TVPC:=2}"
  : "${SETS:=--set model.backbone.base_channels=8 --set model.backbone.stage_blocks=[1,1,1,1] \
--set model.neck.out_channels=64 --set model.neck.groups=8 --set train.batch_size=4 --set train.lr_batch_size=4 \
--set train.warmup_epochs=0 --set train.val_interval=1 --set train.log_interval=2}"
fi
ROOT=${ROOT:-data/tempo_hard}
OUT=${OUT:-work_dirs/tempo_hard}
WORKERS=${WORKERS:-15}
EPOCHS=${EPOCHS:-16}
SEEDS=${SEEDS:-0 1 2}
CLASSES=${CLASSES:-24}
VPC=${VPC:-100}
TVPC=${TVPC:-25}
FRAMES=${FRAMES:-64}
RATIO=${RATIO:-1.5}
DISTRACTORS=${DISTRACTORS:-3}
MODELS=${MODELS:-tempo_hard_tpn_r50_8x8 tempo_hard_slowonly_r50_8x8}
TPN=${TPN:-tpn}
synth=(--classes "$CLASSES" --frames "$FRAMES" --tempo-ratio "$RATIO" --distractors "$DISTRACTORS" --workers "$WORKERS" --overwrite)
if [ ! -f "$ROOT/test.txt" ]; then
  # train + val (20%) from seed 0; a held-out test split of TVPC videos a class from seed 1
  $TPN data synth "$ROOT" --videos-per-class "$VPC" --seed 0 "${synth[@]}"
  $TPN data synth "$ROOT/test_set" --videos-per-class "$TVPC" --seed 1 "${synth[@]}"
  cat "$ROOT/test_set/train.txt" "$ROOT/test_set/val.txt" | sed 's#^#test_set/#' > "$ROOT/test.txt"
fi
for seed in $SEEDS; do
  for cfg in $MODELS; do
    run="$OUT/${cfg}_s$seed"
    # shellcheck disable=SC2086  # SETS is a list of words
    sets=(--set "data.root=$ROOT" --set "data.train_list=$ROOT/train.txt" --set "data.val_list=$ROOT/val.txt"
          --set "data.test_list=$ROOT/test.txt" --set "data.label_map=$ROOT/labels.txt"
          --set "model.head.num_classes=$CLASSES" --set "data.num_workers=$WORKERS"
          --set "train.epochs=$EPOCHS" --set "train.seed=$seed" ${SETS:-})
    $TPN train "$cfg" --work-dir "$run" --overwrite "${sets[@]}"  # a re-run starts afresh
    # the final model (not the best by validation): the same recipe end to end for both
    $TPN test "$cfg" --checkpoint "$run/epoch_$(printf %04d "$EPOCHS").pth" --work-dir "$run/test" \
      --view-scores tpn "${sets[@]}"
  done
done
python3 benchmarks/summarise_tempo.py "$OUT" --models $MODELS --seeds $SEEDS --data "$ROOT"
