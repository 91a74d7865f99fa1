#!/usr/bin/env bash
# The device check, one short script (about 5 minutes on an H200 machine): a 2-worker search on one GPU, the
# export of its choice, the exported script under torchrun with NCCL, and the bf16-autocast evaluation against
# float32 on the same weights. Prints one summary block and writes it to $OUT/gpu_check.txt.
#
#   here:            bash scripts/fetch_gpu_wheels.sh          # Optuna & co. as wheels into .whl/
#   device machine:  bash scripts/gpu_check.sh                 # (device tool: carry [".whl"], timeout ~540 s)
#   any machine:     KDZERO_CHECK_DEVICE=cpu bash scripts/gpu_check.sh   # the same steps on CPU (gloo)
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'rm -rf "${WORK:-}"' EXIT
OUT=${OUT:-/tmp/kdzero_gpu_check}
DEV=${KDZERO_CHECK_DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d)
if ! $PY -c "import optuna" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 KDZERO_CACHE="$WORK/cache" PYTHONPATH="$PWD:${PYTHONPATH:-}"
LOG="$OUT/gpu_check.log"
: > "$LOG"
say() { echo "$*" | tee -a "$OUT/gpu_check.txt"; }
: > "$OUT/gpu_check.txt"
$PY - <<PYEOF | tee -a "$OUT/gpu_check.txt"
import torch, optuna
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else "no GPU"
print(f"torch {torch.__version__}, optuna {optuna.__version__}, device {name}")
PYEOF
DEVICES=$DEV
[ "$DEV" = cuda ] && DEVICES=cuda:0
STORAGE="sqlite:///$WORK/gpu.db"
t0=$(date +%s%N)
$PY -m study search --preset smoke --storage "$STORAGE" --study gpu --devices "$DEVICES" --workers 2 \
  --n-trials 16 --timeout 180 >>"$LOG" 2>&1 || { tail -n 30 "$LOG"; exit 1; }
t1=$(date +%s%N)
say "search: 2 workers on $DEVICES, $(( (t1 - t0) / 1000000000 )) s (teacher and verification included)"
grep -E "chosen|teacher .*val acc|finished:" "$LOG" | tail -n 3 | tee -a "$OUT/gpu_check.txt"
$PY -m analysis export --storage "$STORAGE" --study gpu --out "$WORK/export" >>"$LOG" 2>&1 \
  || { tail -n 20 "$LOG"; exit 1; }
say "export: $(ls "$WORK/export" | tr '\n' ' ')"
t0=$(date +%s%N)
$PY -m torch.distributed.run --standalone --nproc_per_node 1 "$WORK/export/train_student.py" --device "$DEV" \
  --epochs 3 --out "$WORK/torchrun.json" --no-progress >>"$LOG" 2>&1 || { tail -n 30 "$LOG"; exit 1; }
t1=$(date +%s%N)
$PY - "$WORK/torchrun.json" "$(( (t1 - t0) / 1000000 ))" "$DEV" <<'PYEOF' | tee -a "$OUT/gpu_check.txt"
import json, sys
r = json.load(open(sys.argv[1]))
backend = "nccl" if sys.argv[3].startswith("cuda") else "gloo"
steps = r.get("result", {}).get("steps")
print(f"torchrun ({backend}, world {r['world_size']}): {r['epochs']} epochs, {steps} steps, "
      f"test acc {r['test_accuracy']:.4f}, {int(sys.argv[2]) / 1000:.1f} s")
PYEOF
$PY - "$DEV" <<'PYEOF' | tee -a "$OUT/gpu_check.txt"
import sys, time, torch
from trainers import DataConfig, create_model, load_dataset
from trainers.metrics import evaluate_split
dev = torch.device(sys.argv[1])
splits = load_dataset(DataConfig(name="digits", val_size=300))
torch.manual_seed(0)
model = create_model("cnn_tiny", splits.num_classes, splits.in_channels).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x, y = splits.train.x.to(dev), splits.train.y.to(dev)
for _ in range(200):  # a few epochs of plain CE so the logits mean something
    idx = torch.randint(0, len(y), (64,), device=dev)
    loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
    opt.zero_grad(); loss.backward(); opt.step()
t = time.perf_counter(); a = evaluate_split(model, splits.val, device=dev, cka=False, amp=False); t32 = time.perf_counter() - t
t = time.perf_counter(); b = evaluate_split(model, splits.val, device=dev, cka=False, amp=True); t16 = time.perf_counter() - t
print(f"evaluation fp32 vs bf16 autocast ({dev}): acc {a['accuracy']:.4f} vs {b['accuracy']:.4f}, "
      f"ce {a['ce']:.4f} vs {b['ce']:.4f} (|diff| {abs(a['ce'] - b['ce']):.2e}); {t32*1e3:.0f} ms vs {t16*1e3:.0f} ms")
PYEOF
