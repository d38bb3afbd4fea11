#!/usr/bin/env bash
# The MHCL training step on the CPU, ours against PyTorch's bench_step.py, back to back, in
# rounds; prints each run's JSON line with its peak RSS, then the medians and ratios.
#
#   scripts/bench-cpu-step.sh [ROUNDS]
#
# Environment:
#   BENCH_CONFIGS  ";"-separated "ARCH BATCH SIZE K OURS_ITERS TORCH_ITERS"
#                  (default: resnet18 32 64 4096 15 10; resnet50 16 64 4096 15 10;
#                   resnet50 32 112 4096 5 5)
#   BENCH_BINS     space-separated binaries of ours, each run as `BIN step ...` (gpu_check) or
#                  `BIN ...` (mhcl_bench_step) (default target/release/examples/gpu_check);
#                  name=PATH labels one
#   PYTHON         python with torch (default python3); REFERENCE_DIR (../shared/reference)
#   THREADS        threads of both sides (default: the number of cores)
# Run it on a quiet machine (no compiler running): PyTorch slows down far more than we do
# under load.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
CONFIGS=${BENCH_CONFIGS:-resnet18 32 64 4096 15 10;resnet50 16 64 4096 15 10;resnet50 32 112 4096 5 5}
BINS=${BENCH_BINS:-ours=target/release/examples/gpu_check}
PY=${PYTHON:-python3}
REF=${REFERENCE_DIR:-../shared/reference}
THREADS=${THREADS:-$(nproc)}
export RAYON_NUM_THREADS=$THREADS
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

run() { # LABEL CONFIG CMD...: appends "LABEL|CONFIG|ms|rss_kb" to $LOG
    local label=$1 config=$2
    shift 2
    local out rss ms
    out=$( { /usr/bin/time -f "RSS %M" "$@" 2>&1 1>&3 | grep '^RSS' >&4; } 3>&1 4>/tmp/bench-rss.$$)
    rss=$(awk '{print $2}' /tmp/bench-rss.$$)
    ms=$(echo "$out" | grep -o '"ms_per_step": [0-9.]*' | tail -1 | awk '{print $2}')
    echo "$label [$config] ms_per_step $ms, peak RSS $((rss / 1024)) MiB"
    echo "$label|$config|$ms|$rss" >>"$LOG"
}

IFS=';' read -r -a LINES <<<"$CONFIGS"
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round"
    for line in "${LINES[@]}"; do
        read -r arch batch size k ours_iters torch_iters <<<"$line"
        config="$arch b$batch ${size}px K$k"
        run pytorch "$config" "$PY" "$REF/bench_step.py" --arch "$arch" --batch "$batch" --size "$size" \
            --moco-k "$k" --mlp --threads "$THREADS" --iters "$torch_iters" --warmup 2
        for spec in $BINS; do
            label=${spec%%=*}
            bin=${spec#*=}
            sub=()
            case "$(basename "$bin")" in gpu_check*) sub=(step) ;; esac
            run "$label" "$config" "$bin" "${sub[@]}" "$arch" "$batch" "$size" "$k" "$ours_iters"
        done
    done
done
rm -f /tmp/bench-rss.$$

echo "== medians of $ROUNDS rounds ($THREADS threads)"
python3 - "$LOG" <<'PYEOF'
import sys, statistics
from collections import defaultdict
runs = defaultdict(list)
rss = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    label, config, ms, kb = line.strip().split("|")
    if (label, config) not in runs:
        order.append((label, config))
    runs[(label, config)].append(float(ms))
    rss[(label, config)].append(int(kb))
configs = list(dict.fromkeys(c for _, c in order))
labels = list(dict.fromkeys(l for l, _ in order))
print("| step | " + " | ".join(f"{l} ms" for l in labels) + " | " +
      " | ".join(f"{l} / pytorch" for l in labels if l != "pytorch") + " | peak RSS (MiB) |")
print("| --- |" + " ---: |" * (2 * len(labels) - 1) + " --- |")
for c in configs:
    med = {l: statistics.median(runs[(l, c)]) for l in labels if (l, c) in runs}
    mem = {l: max(rss[(l, c)]) // 1024 for l in labels if (l, c) in rss}
    cells = [f"{med[l]:.0f}" for l in labels]
    ratios = [f"{med[l] / med['pytorch']:.2f}x" for l in labels if l != "pytorch"]
    print(f"| {c} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " | " +
          ", ".join(f"{l} {mem[l]}" for l in labels) + " |")
PYEOF
