#!/usr/bin/env bash
# The GPU check: one device call of at most 8 minutes on an NVIDIA machine without Rust or
# network, from the repository root, with the bundle of scripts/build-gpu-bundle.sh
# (.gpu-bin/, .gpu-data/, .gl/). Every step has its own time limit; a step that would not get its
# minimum is skipped, and the closing table says so.
#
# Per backend of ours (cuda first), most important first, since later steps are skipped when
# time runs short:
#   1. the MHCL step, ResNet-50 at 224 px, batch 64, K 65536, 8 scales, MLP head: PyTorch
#      bench_step.py --device cuda in f32 (its defaults: TF32 convolutions) and with --amp bf16
#      --channels-last (with the first backend only); ours (gpu_check step) in f32 and
#      --precision bf16 (on vulkan where the driver allows), each with its phases (--profile,
#      after the timed steps). Peak GPU memory of each run from nvidia-smi (whole device,
#      sampled every 100 ms; nothing else runs meanwhile);
#   2. the PyTorch conformance cases (gpu_check conformance, with the bf16-vs-f32 loss curve);
#   3. end to end (first backend only): gpu_check mhcl pretrain on the AID subset at 224 px,
#      batch 64, ~200 steps, 16 loader threads;
#   4. the same step benchmarks for ResNet-18 at 64 px, batch 32, K 4096;
#   5. the one-process NCCL check (gpu_check nccl, cuda only);
# then a closing table (gpu-table.md): ms/step, images/s, ratio to PyTorch AMP and to PyTorch
# f32, peak GPU memory, first step (compilation and autotuning). Before all that, bad input on
# the GPU machine (a GPU index that does not exist, a missing libdevice, an unknown precision,
# bf16 on vulkan): one line each.
#
# Returned in $OUT: gpu-check.log, gpu-table.md, results.tgz (every step's JSON, log, exit
# status and memory samples) and environment.tar.xz (cubecl's compiled kernels and autotune
# results: unpacked here into target/ and carried as target/environment, a later call skips
# the compilation and tuning).
#
# Usage (device tool):
#   run(command="bash scripts/gpu-check.sh", carry=[".gpu-bin", ".gpu-data", ".gl"], timeout_s=510)
#
# Environment:
#   GPU_CHECK_BUDGET   seconds for the whole script (default 450)
#   GPU_CHECK_DEVICES  our backends, in order (default "cuda vulkan"; "cpu" for a stand-in run)
#   GPU_CHECK_TORCH_DEVICE  PyTorch's device (default cuda)
#   GPU_CHECK_CONFIGS  the benchmarks, ";"-separated "NAME ARCH BATCH SIZE K ITERS"
#                      (default "r50 resnet50 64 224 65536 10;r18 resnet18 32 64 4096 20")
#   GPU_CHECK_ONLY     space-separated step names to run (default: all; names in the log)
#   GPU_CHECK_PRETRAIN_STEPS  steps of the end-to-end run (default 200, rounded up to epochs)
#   GPU_CHECK_PRETRAIN "ARCH SIZE BATCH K"  its model (default "resnet50 224 64 65536")
#   GPU_CHECK_PRETRAIN_DATA  its ImageFolder (default .gpu-data/aid; synthetic when absent)
#   GPU_CHECK_SKIP_HASH=1  run a bundle built from other sources (it is refused otherwise)
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
# Everything a step writes goes to $W; $OUT gets back only four files (the device tool returns
# at most 8): gpu-check.log, gpu-table.md, results.tgz (all of $W, refreshed after every step, so
# a run cut short still returns what it did) and environment.tar.xz (cubecl's kernel caches).
W=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
rm -rf "$W"
mkdir -p "$W"
exec > >(tee "$OUT/gpu-check.log") 2>&1
BUDGET=${GPU_CHECK_BUDGET:-450}
DEVICES=${GPU_CHECK_DEVICES:-cuda vulkan}
TORCH_DEVICE=${GPU_CHECK_TORCH_DEVICE:-cuda}
CONFIGS=${GPU_CHECK_CONFIGS:-r50 resnet50 64 224 65536 10;r18 resnet18 32 64 4096 20}
ONLY=${GPU_CHECK_ONLY:-}
PRETRAIN_STEPS=${GPU_CHECK_PRETRAIN_STEPS:-200}
read -r p_arch p_size p_batch p_k <<<"${GPU_CHECK_PRETRAIN:-resnet50 224 64 65536}"
BIN=/tmp/gpu-bin/gpu_check
ROOT=$(pwd)
elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(elapsed))); }
HAVE_SMI=0
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && HAVE_SMI=1

pack() { tar -czf "$OUT/results.tgz" -C "$W" --exclude='*.safetensors' . 2>/dev/null; }

# step NAME LIMIT MIN CMD...: runs CMD with a timeout of min(LIMIT, time left - 15 s) when that is
# at least MIN seconds, sampling GPU memory meanwhile into $W/NAME.mem; records the status in
# $W/NAME.rc (124: timed out or skipped).
step() {
    local name=$1 limit=$2 min=$3
    shift 3
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
        echo 124 >"$W/$name.rc"
        return 124
    fi
    local avail=$(($(left) - 15))
    [ "$avail" -lt "$limit" ] && limit=$avail
    if [ "$limit" -lt "$min" ]; then
        echo "== $name: SKIPPED (${avail}s left, needs ${min}s)" >&2
        echo 124 >"$W/$name.rc"
        return 124
    fi
    echo "== $name (limit ${limit}s, at $(elapsed)s): $*" >&2
    local sampler=
    if [ "$HAVE_SMI" = 1 ]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$W/$name.mem" 2>/dev/null &
        sampler=$!
    fi
    timeout -k 5 "$limit" "$@"
    local rc=$?
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
    echo "$rc" >"$W/$name.rc"
    echo "== $name: exit $rc after $(elapsed)s" >&2
    pack
    return $rc
}

echo "== GPU check at $(date -u +%FT%TZ); budget ${BUDGET}s; ours on: $DEVICES"
[ -f .gpu-bin/MANIFEST ] && [ -f .gpu-bin/gpu_check.xz ] || {
    echo "error: .gpu-bin/ is missing or incomplete: run scripts/build-gpu-bundle.sh and carry .gpu-bin"
    exit 2
}
cat .gpu-bin/MANIFEST
mkdir -p "$(dirname "$BIN")"
xz -dc .gpu-bin/gpu_check.xz >"$BIN" && chmod +x "$BIN" || {
    echo "error: cannot unpack .gpu-bin/gpu_check.xz"
    exit 2
}
built=$("$BIN" info | sed -n 's/^source //p')
tree=$(bash scripts/source-hash.sh)
if [ "$built" != "$tree" ] && [ "${GPU_CHECK_SKIP_HASH:-0}" != 1 ]; then
    echo "error: .gpu-bin was built from sources $built but this tree is $tree: rebuild it with scripts/build-gpu-bundle.sh"
    exit 2
fi
echo "gpu_check: $("$BIN" info | tr '\n' ' ')"
[ "$HAVE_SMI" = 1 ] && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))' 2>&1
echo "cores: $(nproc)"

# the machine's libraries for our binary
site=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages()))' 2>/dev/null)
if [ -z "${CUDA_PATH:-}" ]; then
    for root in /usr/local/cuda /opt/cuda /usr/lib/cuda /usr; do
        [ -f "$root/nvvm/libdevice/libdevice.10.bc" ] && break
        root=
    done
    if [ -z "$root" ]; then
        # the nvidia-cuda-nvcc wheel of the machine's PyTorch ships nvvm/libdevice
        bc=$(find $site -path '*nvvm/libdevice/libdevice.10.bc' 2>/dev/null | head -1)
        [ -n "$bc" ] && root=$(dirname "$(dirname "$(dirname "$bc")")")
    fi
    if [ -n "$root" ]; then
        export CUDA_PATH=$root
        echo "CUDA_PATH=$CUDA_PATH (libdevice)"
    else
        echo "warning: no libdevice.10.bc found: --device cuda will say so"
    fi
fi
NCCL=$(find $site -path '*nvidia/nccl/lib/libnccl.so*' 2>/dev/null | head -1)
if [ -n "$NCCL" ]; then
    mkdir -p /tmp/nccl-lib && ln -sf "$NCCL" /tmp/nccl-lib/libnccl.so
    export LD_LIBRARY_PATH=/tmp/nccl-lib:$(dirname "$NCCL")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "NCCL: $NCCL"
fi
if [[ " $DEVICES " == *" vulkan "* ]]; then
    if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
        if ls .gl/*.deb >/dev/null 2>&1; then
            for f in .gl/*.deb; do dpkg -x "$f" /; done
            ldconfig
            echo "Vulkan loader unpacked from .gl/"
        else
            echo "warning: no libvulkan.so.1 and no .gl/ packages"
        fi
    fi
    if ! ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json >/dev/null 2>&1; then
        for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.x86_64.json; do
            if [ -f "$f" ]; then export VK_DRIVER_FILES=$f; echo "VK_DRIVER_FILES=$f"; break; fi
        done
    fi
fi
# kernel and autotune caches (cubecl keeps them under <workspace>/target/environment): carried
# back from an earlier call when present, returned in $OUT for the next one
mkdir -p target/environment

torch_bench() { # NAME ARCH BATCH SIZE K ITERS EXTRA...
    local name=$1 arch=$2 batch=$3 size=$4 k=$5 iters=$6
    shift 6
    step "$name" 60 20 python3 .gpu-bin/reference/bench_step.py --device "$TORCH_DEVICE" \
        --arch "$arch" --batch "$batch" --size "$size" --moco-k "$k" --mlp --iters "$iters" \
        --warmup 3 "$@" >"$W/$name.json"
    tail -1 "$W/$name.json"
}
ours_bench() { # NAME DEVICE ARCH BATCH SIZE K ITERS EXTRA...
    local name=$1 dev=$2 arch=$3 batch=$4 size=$5 k=$6 iters=$7
    shift 7
    step "$name" 110 30 "$BIN" step "$arch" "$batch" "$size" "$k" "$iters" --warmup 3 \
        --profile --device "$dev" "$@" >"$W/$name.json"
    tail -1 "$W/$name.json"
}

# bad input on the GPU machine: each must be one line and a non-zero exit
bad_input() {
    local n
    n=$(nvidia-smi -L 2>/dev/null | wc -l)
    for cmd in "step resnet18 8 32 64 1 --device cuda:$((n + 3))" \
        "step resnet18 8 32 64 1 --device cuda --precision fp8"; do
        echo "\$ gpu_check $cmd"
        $BIN $cmd >/dev/null
        echo "(exit $?)"
    done
    echo "\$ CUDA_PATH=/nonexistent gpu_check step resnet18 8 32 64 1 --device cuda"
    CUDA_PATH=/nonexistent $BIN step resnet18 8 32 64 1 --device cuda >/dev/null
    echo "(exit $?)"
    if [[ " $DEVICES " == *" vulkan "* ]]; then
        echo "\$ gpu_check step resnet18 8 32 64 1 --device vulkan --precision bf16"
        $BIN step resnet18 8 32 64 1 --device vulkan --precision bf16 >/dev/null
        echo "(exit $?)"
    fi
    return 0
}
if [[ " $DEVICES " == *" cuda "* ]]; then
    export -f bad_input
    export BIN DEVICES
    step bad_input 60 20 bash -c bad_input 2>&1 | tee "$W/bad_input.log"
fi

IFS=';' read -r -a CONFIG_LINES <<<"$CONFIGS"
first_dev=${DEVICES%% *}
config_benchmarks() { # DEV LINE: PyTorch (with the first backend only), then ours, f32 and bf16
    local dev=$1 cname arch batch size k iters
    read -r cname arch batch size k iters <<<"$2"
    if [ "$dev" = "$first_dev" ]; then
        torch_bench "torch_${cname}_f32" "$arch" "$batch" "$size" "$k" "$iters"
        torch_bench "torch_${cname}_amp" "$arch" "$batch" "$size" "$k" "$iters" --amp bf16 --channels-last
    fi
    ours_bench "ours_${cname}_${dev}_f32" "$dev" "$arch" "$batch" "$size" "$k" "$iters"
    ours_bench "ours_${cname}_${dev}_bf16" "$dev" "$arch" "$batch" "$size" "$k" "$iters" --precision bf16
}

pretrain() { # DEV: the real loader, 16 threads
    local dev=$1 data n_images per_epoch epochs
    data=${GPU_CHECK_PRETRAIN_DATA:-.gpu-data/aid}
    if [ ! -d "$data/train" ]; then
        data=/tmp/gpu-check-synthetic
        rm -rf "$data"
        "$BIN" mhcl synthetic --classes 8 --train 40 --val 4 --size "$p_size" "$data" >/dev/null
    fi
    n_images=$(find "$data/train" -type f | wc -l)
    per_epoch=$((n_images / p_batch))
    [ "$per_epoch" -lt 1 ] && per_epoch=1
    epochs=$(((PRETRAIN_STEPS + per_epoch - 1) / per_epoch))
    step "pretrain_$dev" 120 40 "$BIN" mhcl pretrain "$data" -a "$p_arch" --image-size "$p_size" \
        -b "$p_batch" -j 16 --moco-k "$p_k" --epochs "$epochs" --mhcl --a 1 --b 0.1 --mlp --aug-plus \
        --cos --moco-t 0.2 --lr 0.03 --print-freq 10 --no-progress --device "$dev" \
        --output-dir "$W/pretrain_$dev" --save-epochs >"$W/pretrain_$dev.log" 2>&1
    tail -4 "$W/pretrain_$dev.log"
    # checkpoints (about 1 GB for ResNet-50 with its queue) do not travel back
    rm -f "$W/pretrain_$dev"/*.safetensors
}

# In order of what matters most, since later steps are skipped when time runs short: per
# backend the first configuration (ResNet-50), conformance, the end-to-end run (first backend),
# the other configurations, NCCL.
for dev in $DEVICES; do
    config_benchmarks "$dev" "${CONFIG_LINES[0]}"
    step "conformance_$dev" 90 30 "$BIN" conformance --device "$dev" --dir tests/conformance \
        --curve-steps 300 --json "$W/conformance_$dev.json" >"$W/conformance_$dev.log" 2>&1
    cat "$W/conformance_$dev.log"
    [ "$dev" = "$first_dev" ] && pretrain "$dev"
    for line in "${CONFIG_LINES[@]:1}"; do
        config_benchmarks "$dev" "$line"
    done
    if [ "$dev" = cuda ]; then
        step nccl 30 15 "$BIN" nccl 0 >"$W/nccl.log" 2>&1
        cat "$W/nccl.log"
    fi
done

(cd target && tar -cJf "$OUT/environment.tar.xz" environment 2>/dev/null) || true

# 5. the table
export GPU_CHECK_PRETRAIN="$p_arch $p_size $p_batch $p_k"
python3 - "$W" "$CONFIGS" "$DEVICES" <<'PYEOF'
import json, os, sys
out, configs, devices = sys.argv[1], sys.argv[2], sys.argv[3].split()
def load(name):
    try:
        text = open(os.path.join(out, name + ".json")).read()
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        if line.strip().startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None
def rc(name):
    try:
        return open(os.path.join(out, name + ".rc")).read().strip()
    except OSError:
        return "not run"
def status(name):
    r = rc(name)
    return {"0": "ok", "124": "timed out / skipped", "not run": "not run"}.get(r, f"failed (exit {r})")
def peak(name):
    try:
        vals = [int(v) for v in open(os.path.join(out, name + ".mem")).read().split() if v.isdigit()]
    except OSError:
        return ""
    return f"{max(vals) / 1024:.1f} GiB" if vals else ""
rows = []
gpu = None
for line in configs.split(";"):
    cname, arch, batch, size, k, iters = line.split()
    rows.append(f"\n**{arch}, {size} px, batch {batch}, K {k}, 8 scales, MLP** (median of {iters} steps after 3 warm-up)\n")
    rows.append("| run | ms/step | images/s | vs PyTorch AMP | vs PyTorch f32 | peak GPU memory | first step | status |")
    rows.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    t_f32, t_amp = load(f"torch_{cname}_f32"), load(f"torch_{cname}_amp")
    gpu = gpu or (t_f32 or {}).get("gpu") or (t_amp or {}).get("gpu")
    base_amp = (t_amp or {}).get("images_per_s")
    base_f32 = (t_f32 or {}).get("images_per_s")
    def row(label, name):
        r = load(name)
        if not r:
            rows.append(f"| {label} | | | | | {peak(name)} | | {status(name)} |")
            return
        ips = r.get("images_per_s")
        ra = f"{ips / base_amp:.2f}x" if base_amp and ips else ""
        rf = f"{ips / base_f32:.2f}x" if base_f32 and ips else ""
        first = f"{r['first_step_s']:.1f} s" if "first_step_s" in r else ""
        rows.append(f"| {label} | {r.get('ms_per_step')} | {ips} | {ra} | {rf} | {peak(name)} | {first} | {status(name)} |")
    tv = (t_f32 or t_amp or {}).get("torch", "?")
    row(f"PyTorch {tv}, f32 (TF32 convolutions)", f"torch_{cname}_f32")
    row(f"PyTorch {tv}, AMP bf16 + channels-last", f"torch_{cname}_amp")
    for dev in devices:
        row(f"ours, {dev}, f32", f"ours_{cname}_{dev}_f32")
        row(f"ours, {dev}, bf16", f"ours_{cname}_{dev}_bf16")
    for dev in devices:
        for prec in ("f32", "bf16"):
            r = load(f"ours_{cname}_{dev}_{prec}")
            if r and "phases_ms" in r:
                ph = ", ".join(f"{k} {v}" for k, v in r["phases_ms"].items() if v)
                rows.append(f"\nphases, ours {dev} {prec} (ms, synchronized): {ph}")
rows.append("")
for dev in devices:
    try:
        conf = json.load(open(os.path.join(out, f"conformance_{dev}.json")))
        bad = [c["name"] for c in conf.get("cases", []) if c.get("status") != "PASS"]
        rows.append(f"Conformance on {dev}: {conf.get('passed')} passed, {conf.get('failed')} failed"
                    + (f" (not passed: {', '.join(bad)})" if bad else "") + f"; {status('conformance_' + dev)}.")
    except (OSError, ValueError):
        rows.append(f"Conformance on {dev}: {status('conformance_' + dev)}.")
if "cuda" in devices:
    rows.append(f"NCCL check: {status('nccl')}.")
dev = devices[0]
try:
    log = open(os.path.join(out, f"pretrain_{dev}.log")).read()
    m = json.load(open(os.path.join(out, f"pretrain_{dev}", "metrics.json")))
    epochs = m if isinstance(m, list) else m.get("epochs", [])
    ips = [e.get("images_per_s") for e in epochs if e.get("images_per_s")]
    last = ips[1:] or ips
    rows.append(f"End to end (mhcl pretrain --device {dev}, {os.environ.get('GPU_CHECK_PRETRAIN', 'resnet50 224 64 65536')}, 16 loader threads): "
                f"{len(epochs)} epochs, images/s per epoch {ips}; after the first epoch median "
                f"{sorted(last)[len(last) // 2] if last else '?'}; {status('pretrain_' + dev)}.")
except (OSError, ValueError, AttributeError):
    rows.append(f"End to end (mhcl pretrain --device {dev}): {status('pretrain_' + dev)}.")
rows.append(f"GPU: {gpu or '?'}.")
text = "\n".join(rows) + "\n"
print("== table\n" + text)
open(os.path.join(out, "gpu-table.md"), "w").write(text)
PYEOF
cp "$W/gpu-table.md" "$OUT/" 2>/dev/null
pack
echo "== done after $(elapsed)s"
