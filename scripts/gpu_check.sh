#!/usr/bin/env bash
# The one command for the lent GPU machine (docs/GPU.md): unpack the GPU
# bundle, point it at the machine's own CUDA libraries, then
#   1. smoke:   the seed Python layer in a LeNet that trains on gpu:0
#   2. service: `flask serve --no-proxy` from the bundle, a device=gpu job
#               through the REST API to done, NVML samples, the containment
#               in force (loudly when it is not bubblewrap), service vs bare
#               pycaffe on the GPU
#   3. figures: LeNet and a small AlexNet-like net, iterations/s on GPU vs CPU;
#               one Python layer in the training path vs none
# and write $OUT/gpu_check.json (every step's result, also when a later step
# failed), $OUT/gpu_check.log and $OUT/logs.tar.gz.
#
# On the GPU machine, from the repository root, with the bundle carried:
#   run(command="bash scripts/gpu_check.sh", carry=["build/gpu-bundle.tar.xz"], timeout_s=480)
# Here (no GPU), a dry run of the same steps in CPU mode:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 bash scripts/gpu_check.sh
#
# Environment: OUT (default build/gpu-check-out), GPU_BUNDLE (default
# build/gpu-bundle.tar.xz), GPU_CHECK_DEVICE (gpu | cpu), GPU_CHECK_QUICK=1
# (short figures), GPU_CHECK_TOTAL (seconds for everything, default 420),
# GPU_CHECK_LIMIT_SCALE (multiplies each step's limit; a slow shared machine),
# GPU_CHECK_CUDA_DIRS (colon-separated folders to take the
# CUDA libraries from; default: the machine's Python site-packages),
# GPU_CHECK_KEEP=1 (keep the unpacked bundle and the service's data in /tmp).
# Exit status: 0 when every step succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=$(pwd)
OUT=${OUT:-$TREE/build/gpu-check-out}
BUNDLE=${GPU_BUNDLE:-$TREE/build/gpu-bundle.tar.xz}
DEVICE=${GPU_CHECK_DEVICE:-gpu}
QUICK=${GPU_CHECK_QUICK:-0}
# The whole check ends within this many seconds (the device call's limit is
# 600; 420 leaves a rerun inside the session's 15 minutes).
TOTAL=${GPU_CHECK_TOTAL:-420}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/layerbench-gpu-check.XXXXXX)
chmod 755 "$WORK"
STEPS=$WORK/steps
mkdir -p "$STEPS"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
T0=$(date +%s)
say() { printf '[gpu_check %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

# step NAME SECONDS CMD...: run under a timeout (cut to what is left of
# GPU_CHECK_TOTAL), record {rc, seconds, timed_out} in $STEPS/NAME.status;
# never stops the script.
step() {
  local name=$1 limit=$2 t rc=0 left; shift 2
  limit=$(( limit * ${GPU_CHECK_LIMIT_SCALE:-1} ))
  left=$(( TOTAL - ($(date +%s) - T0) ))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 10 ]; then
    say "step $name SKIPPED: the ${TOTAL}s budget is spent"
    echo '{"rc": -1, "seconds": 0, "timed_out": false, "skipped": true}' > "$STEPS/$name.status"
    return 0
  fi
  say "step $name (limit ${limit}s): $*"
  t=$(date +%s%N)
  timeout --kill-after=15 "$limit" "$@" || rc=$?
  t=$(( ($(date +%s%N) - t) / 1000000 ))
  printf '{"rc": %d, "seconds": %d.%03d, "timed_out": %s}\n' "$rc" $((t / 1000)) $((t % 1000)) \
    "$([ "$rc" = 124 ] || [ "$rc" = 137 ] && echo true || echo false)" > "$STEPS/$name.status"
  say "step $name: rc=$rc"
  return 0
}

# Whatever happens, assemble the JSON and the logs at the end.
finish() {
  set +e
  local py
  py=$(command -v python3 || echo "$R/bin/python3")
  local code=$1
  "$py" - "$STEPS" "$OUT/gpu_check.json" "$DEVICE" <<'EOF'
import json, sys, pathlib
steps, out, device = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
doc = {"device_mode": device, "steps": {}}
for f in sorted(steps.glob("*.status")):
    doc["steps"][f.stem] = json.loads(f.read_text())
for f in sorted(steps.glob("*.json")):
    try:
        doc[f.stem] = json.loads(f.read_text())
    except ValueError as exc:
        doc[f.stem] = {"unreadable": str(exc)}
for f in sorted(steps.glob("*.txt")):
    doc[f.stem] = f.read_text()[-4000:]
svc = doc.get("service") or {}
doc["summary"] = {
    "smoke_ok": (doc.get("smoke") or {}).get("ok"),
    "service_ok": svc.get("ok"), "job_done": svc.get("job_done"), "nvml_seen": svc.get("nvml_seen"),
    "containment": svc.get("containment"), "LOUD_WARNING": svc.get("LOUD_WARNING"),
    "service_vs_bare_ratio": (svc.get("service_vs_bare") or {}).get("ratio"),
    "figures": {k: v for k, v in (doc.get("figures") or {}).items() if k != "runs"},
}
doc["summary"]["all_steps_ok"] = bool(doc["steps"]) and all(s["rc"] == 0 for s in doc["steps"].values())
out.write_text(json.dumps(doc, indent=1) + "\n")
print(json.dumps(doc["summary"], indent=1))
sys.exit(0 if doc["summary"]["all_steps_ok"] else 1)
EOF
  [ $? = 0 ] || [ "$code" != 0 ] || code=1
  (cd "$WORK" && find . -maxdepth 6 \( -name '*.log' -o -name 'metrics.jsonl' \) -print0 \
     | tar --null -T - -czf "$OUT/logs.tar.gz") 2>/dev/null
  say "done in $(( $(date +%s) - T0 )) s (exit $code); results in $OUT/gpu_check.json"
  [ "${GPU_CHECK_KEEP:-0}" = 1 ] || rm -rf "$WORK"
  exit "$code"
}
R=$WORK/layerbench-gpu
trap 'finish $?' EXIT

# 0. The machine, and the bundle unpacked.
{
  echo "date: $(date -u +%FT%TZ)"; echo "uname: $(uname -a)"
  echo "glibc: $(ldd --version 2>&1 | head -1)"
  echo "python3: $(command -v python3) $(python3 --version 2>&1)"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: none"
  echo "nproc: $(nproc)"
  for t in setpriv unshare bwrap; do echo "$t: $(command -v $t || echo missing)"; done
  echo "max_user_namespaces: $(cat /proc/sys/kernel/max_user_namespaces 2>&1)"
  echo "unshare -U works: $(unshare -U true 2>&1 && echo yes)"
  echo "ldconfig libcuda: $(/sbin/ldconfig -p 2>/dev/null | grep -m1 'libcuda\.so\.1 ' || echo none)"
  echo "ldconfig libnvidia-ml: $(/sbin/ldconfig -p 2>/dev/null | grep -m1 'libnvidia-ml\.so\.1 ' || echo none)"
} > "$STEPS/machine.txt" 2>&1
cat "$STEPS/machine.txt"
[ -f "$BUNDLE" ] || { say "NO BUNDLE at $BUNDLE (make gpu-bundle, then carry it)"; exit 1; }
# tar needs the xz program for .tar.xz; Python's tarfile is the fallback.
step unpack 60 bash -c 'tar -C "$0" -xf "$1" 2>/dev/null || python3 -c "import sys, tarfile
tarfile.open(sys.argv[2]).extractall(sys.argv[1], filter=\"tar\")" "$0" "$1"' "$WORK" "$BUNDLE"
[ -x "$R/bin/python3" ] || { say "the bundle did not unpack"; exit 1; }
cp "$R/BUNDLE.json" "$STEPS/bundle.json"

# 1. The machine's CUDA libraries into the bundle (where _caffe.so's RUNPATH
#    looks, inside what the sandbox shows), and the driver's NVML for the
#    service's own processes.
if [ -n "${GPU_CHECK_CUDA_DIRS:-}" ]; then
  IFS=: read -r -a CUDA_DIRS <<< "$GPU_CHECK_CUDA_DIRS"
else
  CUDA_DIRS=()
  for py in python3 /opt/torch/.venv/bin/python3 /usr/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    mapfile -t -O "${#CUDA_DIRS[@]}" CUDA_DIRS < <("$py" -c 'import site, sys; print(*site.getsitepackages(), sep="\n")' 2>/dev/null || true)
  done
  CUDA_DIRS+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
fi
say "CUDA library search: ${CUDA_DIRS[*]}"
step link_cuda 60 bash -c '"$0" "$@" > "'"$STEPS"'/cuda_lib_dir.txt"' "$R/link-cuda.sh" "${CUDA_DIRS[@]}"
CUDA_LIB=$(cat "$STEPS/cuda_lib_dir.txt" 2>/dev/null || true)
NVML_DIR=""
if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libnvidia-ml\.so\.1 '; then
  for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
    [ -e "$d/libnvidia-ml.so.1" ] && { NVML_DIR=$d; break; }
  done
fi
export LD_LIBRARY_PATH=${CUDA_LIB}${NVML_DIR:+:$NVML_DIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
{ ldd "$R/lib/python3/dist-packages/caffe/_caffe.so" | grep -E 'not found|cuda|cublas|curand' || true; } \
  > "$STEPS/caffe_ldd.txt"
cat "$STEPS/caffe_ldd.txt"
# Byte-compile once (16 cores): every later interpreter starts faster.
step compile 60 "$R/bin/python3" -m compileall -q -j0 "$R/lib/python3.11" "$R/lib/python3" "$R/src"

if [ "$QUICK" = 1 ]; then FIG_SECONDS=1; ITERS=60; FIRST=60; ROUNDS=1; else FIG_SECONDS=5; ITERS=1000; FIRST=5000; ROUNDS=3; fi   # FIRST: long enough for NVML samples
NET_MODES=$([ "$DEVICE" = gpu ] && echo gpu,cpu || echo cpu)
DS=$R/data/datasets

# 2. GPU smoke: the seed Python layer, trained on gpu:0.
step smoke 90 env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="$LD_LIBRARY_PATH" \
  "$R/bin/python3" scripts/gpu_nets.py selfcheck --mode "$DEVICE" --datasets "$DS" --json "$STEPS/smoke.json"

# 3. The service end to end.
step service 180 env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="$LD_LIBRARY_PATH" \
  "$R/bin/python3" scripts/gpu_service_check.py --bundle "$R" --work "$WORK/service" --device "$DEVICE" \
  --first-iters "$FIRST" --iters "$ITERS" --rounds "$ROUNDS" --json "$STEPS/service.json"

# 4. Figures.
step figures 150 env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="$LD_LIBRARY_PATH" \
  "$R/bin/python3" scripts/gpu_nets.py figures --modes "$NET_MODES" --seconds "$FIG_SECONDS" \
  --datasets "$DS" --json "$STEPS/figures.json"
