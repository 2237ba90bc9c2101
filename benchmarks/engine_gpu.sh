#!/usr/bin/env bash
# The real commands end to end on a GPU machine, with the shipped tpn_r50_8x8_k400 recipe
# (bf16, channels_last_3d, torch.compile, data.augment_on_device): generate Kinetics-like
# mp4s (340x256, 30 fps, 10 s), `tpn data prepare` them, `tpn train` one epoch from the
# files, `tpn test` the checkpoint (30 views, BN folded). Throughput comes from the
# commands' own logs: training clips/s per log window (steady state after compilation).
# The test of 10 videos checks the path (its time is mostly compilation). Results:
# $OUT/engine_gpu.json.
#   ROOT=/tmp/tpn_engine OUT=work_dirs/engine_gpu WORKERS=15 BATCH=32 bash benchmarks/engine_gpu.sh
set -euo pipefail
ROOT=${ROOT:-/tmp/tpn_engine}
OUT=${OUT:-work_dirs/engine_gpu}
WORKERS=${WORKERS:-15}
BATCH=${BATCH:-32}
TPN=${TPN:-tpn}
mkdir -p "$OUT"
[ -f "$ROOT/orig/train.txt" ] || $TPN data synth "$ROOT/orig" --classes 10 --videos-per-class 6 --size 340x256 \
    --frames 300 --workers "$((WORKERS + 1))"
for split in train val; do
  [ -f "$ROOT/prep/$split.txt" ] || $TPN data prepare "$ROOT/orig/$split.txt" --root "$ROOT/orig" --out "$ROOT/prep" \
      --workers "$((WORKERS + 1))"
done
python3 -c "import sys; t=open(sys.argv[1]).read(); open(sys.argv[2], 'w').write(t * 100)" \
    "$ROOT/prep/train.txt" "$ROOT/prep/big.txt"  # ~150 iterations of batch 32
SETS=(--set "data.root=$ROOT/prep" --set "data.train_list=$ROOT/prep/big.txt" --set "data.val_list=$ROOT/prep/val.txt"
      --set "data.test_list=$ROOT/prep/val.txt" --set "data.label_map=$ROOT/orig/labels.txt"
      --set model.head.num_classes=10 --set "data.num_workers=$WORKERS")
$TPN train tpn_r50_8x8_k400 --work-dir "$OUT/train" --overwrite "${SETS[@]}" --set "train.batch_size=$BATCH" \
    --set "train.lr_batch_size=$BATCH" --set train.epochs=1 --set train.val_interval=0 --set train.log_interval=20 \
    2>&1 | tee "$OUT/train.log" | grep -E "clips/s|ERROR|Error" || true
$TPN test tpn_r50_8x8_k400 --checkpoint "$OUT/train/epoch_0001.pth" --work-dir "$OUT/test" "${SETS[@]}" \
    --set test.batch_size=2 2>&1 | tee "$OUT/test.log" | tail -4
python3 - "$OUT" <<'EOF'
import json, re, sys
from pathlib import Path
from tpn.bench import machine_info
out = Path(sys.argv[1])
rates = [float(m.group(1)) for m in re.finditer(r"iter \d+/\d+ loss \S+ lr \S+ ([\d.]+) clips/s", (out / "train.log").read_text())]
res = dict(machine=machine_info(), train_clips_per_s_windows=rates,
           train_clips_per_s_steady=round(sum(rates[2:]) / max(1, len(rates[2:])), 1) if len(rates) > 2 else None)
res["test_log_tail"] = (out / "test.log").read_text().strip().splitlines()[-3:]  # test: a check, 10 videos
(out / "engine_gpu.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res))
EOF
