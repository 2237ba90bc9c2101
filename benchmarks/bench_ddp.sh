#!/usr/bin/env bash
# Two GPUs against one, with the real commands (issue: DDP correctness and scaling).
#   PART=correct bash benchmarks/bench_ddp.sh   # loss curves 1 vs 2 GPUs (+/- SyncBN), distributed test
#   PART=scale   bash benchmarks/bench_ddp.sh   # clips/s: in-GPU DDP step, and `tpn train` from mp4s
# Correctness: the tempo set (10 classes, 64 videos a class), tempo_tpn_r50_8x8, the same total
# batch (1 x 32 against 2 x 16) and seed, head dropout 0 (dropout masks are drawn per process),
# bf16 + channels_last_3d, eager; a second 1-GPU run measures run-to-run noise (cuDNN picks
# and atomics), the yardstick for the 2-GPU difference. Scaling: tpn_r50_8x8_k400 (compile,
# augmentation on the device) from `tpn data prepare`d copies of 340x256 x264 originals.
# SETS adds overrides to the correctness runs, e.g. SETS="--set train.amp=false --set
# train.cudnn_benchmark=false --set train.lr=0.01" for fp32 with fixed cuDNN algorithms (less run-to-run
# noise, so the 2-GPU gap is visible against it). Results: $OUT/ddp_correct.json, $OUT/ddp_scale.json.
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ROOT=${ROOT:-work_dirs/ddp_data}
OUT=${OUT:-work_dirs/ddp}
NGPU=${NGPU:-2}
WORKERS=${WORKERS:-15}    # loader workers per process
STEPS=${STEPS:-48}        # correctness: optimiser steps (16 a epoch)
REPEAT=${REPEAT:-100}     # scaling: the 48-video training list repeated this often
BATCH=${BATCH:-32}        # scaling: clips per GPU
PART=${PART:-correct}
TPN=${TPN:-tpn}
CFG=${CFG:-tempo_tpn_r50_8x8}
mkdir -p "$OUT"
run2() { torchrun --standalone --nproc-per-node "$NGPU" -m tpn.cli "$@"; }

if [ "$PART" = correct ]; then
  [ -f "$ROOT/tempo/val.txt" ] || $TPN data synth "$ROOT/tempo" --classes 10 --videos-per-class "${VPC:-64}" --frames 96 \
      --seed 0 --workers 30
  T=$ROOT/tempo
  C=(--set "data.root=$T" --set "data.train_list=$T/train.txt" --set "data.val_list=$T/val.txt"
     --set "data.test_list=$T/val.txt" --set "data.label_map=$T/labels.txt" --set model.head.num_classes=10
     --set model.head.dropout=0.0 --set "data.num_workers=$WORKERS" --set train.epochs=$((STEPS / 16))
     --set train.val_interval=0 --set train.log_interval=1 --set train.lr_batch_size=32 --set train.compile=false
     --set train.warmup_epochs=1 ${SETS:-})
  $TPN train "$CFG" --work-dir "$OUT/one_a" "${C[@]}" --set train.batch_size=32 2>&1 | tail -2
  $TPN train "$CFG" --work-dir "$OUT/one_b" "${C[@]}" --set train.batch_size=32 2>&1 | tail -2
  run2 train "$CFG" --work-dir "$OUT/two" "${C[@]}" --set train.batch_size=16 2>&1 | tail -2
  run2 train "$CFG" --work-dir "$OUT/two_sync" "${C[@]}" --set train.batch_size=16 \
      --set train.sync_bn=true 2>&1 | tail -2
  CK=$OUT/two/epoch_$(printf %04d $((STEPS / 16))).pth
  $TPN test "$CFG" --checkpoint "$CK" --work-dir "$OUT/test_one" "${C[@]}" --set test.batch_size=1 2>&1 | tail -2
  run2 test "$CFG" --checkpoint "$CK" --work-dir "$OUT/test_two" "${C[@]}" --set test.batch_size=1 2>&1 | tail -2
  python3 benchmarks/ddp_summary.py correct "$OUT"
else
  if [ ! -f "$ROOT/prep/big.txt" ]; then
    $TPN data synth "$ROOT/orig" --classes 10 --videos-per-class 6 --size 340x256 --frames 300 --workers 30
    for s in train val; do $TPN data prepare "$ROOT/orig/$s.txt" --root "$ROOT/orig" --out "$ROOT/prep" --workers 30; done
    python3 -c "import sys; t=open(sys.argv[1]).read(); open(sys.argv[2], 'w').write(t * int(sys.argv[3]))" \
        "$ROOT/prep/train.txt" "$ROOT/prep/big.txt" "$REPEAT"
  fi
  for n in 1 "$NGPU"; do
    torchrun --standalone --nproc-per-node "$n" benchmarks/bench_ddp_step.py --batch "$BATCH" --steps 60 \
        --out "$OUT/step_$n.json" 2>&1 | tail -1
  done
  S=(--set "data.root=$ROOT/prep" --set "data.train_list=$ROOT/prep/big.txt" --set "data.label_map=$ROOT/orig/labels.txt"
     --set model.head.num_classes=10 --set "data.num_workers=$WORKERS" --set "train.batch_size=$BATCH"
     --set "train.lr_batch_size=$BATCH" --set train.epochs=1 --set train.val_interval=0 --set train.log_interval=10)
  $TPN train tpn_r50_8x8_k400 --work-dir "$OUT/e2e_1" "${S[@]}" > "$OUT/e2e_1.log" 2>&1
  run2 train tpn_r50_8x8_k400 --work-dir "$OUT/e2e_$NGPU" "${S[@]}" > "$OUT/e2e_$NGPU.log" 2>&1
  python3 benchmarks/ddp_summary.py scale "$OUT" "$NGPU" "$WORKERS" "$BATCH"
fi
