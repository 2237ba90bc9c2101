#!/usr/bin/env bash
# Issue 18.3: does the fast test path cost accuracy? One TPN R50 8x8 trained on the harder tempo set
# (benchmarks/tempo_hard.sh, seed 0, its recipe: 16 epochs), then the same held-out test set scored
# 30-view by `tpn test` in each precision, with per-video predictions and per-view softmax; then
# benchmarks/precision_summary.py: top-1 of each, the share of videos whose top-1 equals the fp32
# reference's (criterion: >= 99.5%, which needs >= 200 videos to mean anything: TVPC=50 gives 1200),
# max/mean abs difference of the averaged softmax, and the videos that differ.
# Runs (PRECISIONS): fp32 = unfolded model, IEEE fp32 (NVIDIA_TF32_OVERRIDE=0: no TF32 in cuDNN/cuBLAS),
# the reference; fp32_tf32 = unfolded fp32 with PyTorch's default TF32 convolutions; bf16 / fp16 = BN
# folded, weights held in bf16 / fp16 (the default test path is bf16); bf16_compiled = bf16 folded
# + torch.compile, as the shipped Kinetics configs test. "auto" = tempo_hard.sh's own test run (the
# config's default execution). No fp8 path exists in tpn, so none is scored.
# One H100, one device call (not run yet, estimated at 5-7 minutes; what it measured lies in $OUT):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/av-*.whl && \
#   export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 && TPN="python3 -m tpn.cli" WORK=/tmp/prec \
#   RESULTS=$OUT timeout 540 bash benchmarks/precision_study.sh 2>&1 | tee $OUT/precision_study.log       (carry .whl)
#   bash benchmarks/precision_study.sh --tiny     # CPU, a few minutes: checks the pipeline only
# Env: WORK (data and runs), RESULTS (summary, per-video predictions, log: small files only), WORKERS,
# EPOCHS, TVPC (test videos a class), PRECISIONS, TPN (the command), and tempo_hard.sh's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tiny=()
if [ "${1:-}" = "--tiny" ]; then
  tiny=(--tiny)
  : "${WORK:=work_dirs/precision_tiny}" "${WORKERS:=1}" "${EPOCHS:=2}" "${TVPC:=2}" "${PRECISIONS:=fp32 bf16 fp16}"
fi
WORK=${WORK:-work_dirs/precision_study}
RESULTS=${RESULTS:-$WORK/results}
WORKERS=${WORKERS:-15}
EPOCHS=${EPOCHS:-16}
TVPC=${TVPC:-50}
PRECISIONS=${PRECISIONS:-fp32 bf16 fp16 fp32_tf32 bf16_compiled}
TPN=${TPN:-tpn}
CFG=tempo_hard_tpn_r50_8x8
export ROOT=${ROOT:-$WORK/data} OUT=$WORK/runs WORKERS EPOCHS TVPC TPN SEEDS=0 MODELS=$CFG
mkdir -p "$RESULTS"
# data, training and the default test run: tempo_hard.sh's (its --tiny: 4 classes, 1/8-width model)
bash "$here/tempo_hard.sh" "${tiny[@]}"
run="$OUT/${CFG}_s0"
ckpt="$run/epoch_$(printf %04d "$EPOCHS").pth"
CLASSES=${CLASSES:-$(wc -l < "$ROOT/labels.txt")}
# shellcheck disable=SC2086  # SETS is a list of words (tempo_hard.sh --tiny's model size)
sets=(--set "data.root=$ROOT" --set "data.test_list=$ROOT/test.txt" --set "data.label_map=$ROOT/labels.txt"
      --set "data.train_list=$ROOT/train.txt" --set "data.val_list=$ROOT/val.txt"
      --set "model.head.num_classes=$CLASSES" --set "data.num_workers=$WORKERS")
if [ ${#tiny[@]} -gt 0 ]; then
  sets+=(--set model.backbone.base_channels=8 --set "model.backbone.stage_blocks=[1,1,1,1]"
         --set model.neck.out_channels=64 --set model.neck.groups=8)
fi
summary=(auto="$run/test")
for p in $PRECISIONS; do
  case $p in
    fp32) args=(--precision fp32 --set test.fold_bn=false); env=(NVIDIA_TF32_OVERRIDE=0) ;;
    fp32_tf32) args=(--precision fp32 --set test.fold_bn=false); env=() ;;
    bf16|fp16) args=(--precision "$p"); env=() ;;
    bf16_compiled) args=(--precision bf16 --set train.compile=true); env=() ;;
    *) echo "precision_study.sh: unknown precision run '$p' (fp32, fp32_tf32, bf16, fp16, bf16_compiled)" >&2; exit 2 ;;
  esac
  echo "== tpn test $p: ${args[*]} ${env[*]}"
  env "${env[@]}" $TPN test "$CFG" --checkpoint "$ckpt" --work-dir "$WORK/test_$p" --view-scores tpn \
    "${sets[@]}" "${args[@]}"
  cp "$WORK/test_$p/predictions.csv" "$RESULTS/predictions_$p.csv"
  summary+=("$p=$WORK/test_$p")
  # the reference (fp32) first; re-summarised after each run so a run cut short keeps what was measured
  ordered=("${summary[@]:1}" "${summary[0]}")
  if [ ${#ordered[@]} -ge 2 ]; then
    python3 "$here/precision_summary.py" "${ordered[@]}" --out "$RESULTS/precision_summary.json"
  fi
done
cp "$run/metrics.jsonl" "$RESULTS/train_metrics.jsonl"
