#!/usr/bin/env bash
# Build the GPU bundle: one archive holding everything the service needs that
# the lent GPU machine (Python 3.12, CUDA 13 wheels, no Debian packages of
# ours, no network) lacks — see docs/GPU.md.
#
#   scripts/gpu_bundle.sh            (or: make gpu-bundle)
#
# Output: build/gpu-bundle.tar.xz (<= 60 MiB), unpacking to layerbench-gpu/:
#   bin/python3.11      Debian's interpreter (libpython is linked in); it finds
#                       its prefix from its own location, so no PYTHONHOME is
#                       needed (the sandbox clears the environment)
#   bin/bwrap           bubblewrap, for the sandbox
#   lib/python3.11/     its standard library (no tests, no Tk, no .pyc)
#   lib/python3/dist-packages/  the service's Python deps for 3.11 and the
#                       CUDA pycaffe (sm_90 SASS + compute_90 PTX)
#   lib/so/             the ldd closure of all of the above, minus glibc and
#                       minus the CUDA runtime/cuBLAS/cuRAND/driver, which
#                       link-cuda.sh takes from the GPU machine's own wheels
#   src/                the app (app/, templates/, static/, migrations/, wsgi.py)
#   data/datasets/sample-digits  the built-in dataset, prebuilt (so neither
#                       scikit-learn nor SciPy travels)
#   link-cuda.sh, BUNDLE.json
#
# Environment: GPU_BUNDLE_DIR (default build), GPU_BUNDLE_CAFFE_GPU (default 1),
# CAFFE_JOBS, CAFFE_CACHE_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$(pwd)
BUILD=${GPU_BUNDLE_DIR:-build}
mkdir -p "$BUILD"
BUILD=$(cd "$BUILD" && pwd)
VENV=$BUILD/gpu-venv
STAGE=$BUILD/layerbench-gpu
OUT=$BUILD/gpu-bundle.tar.xz
MAX_MIB=60
log() { printf '[gpu_bundle] %s\n' "$*" >&2; }
t0=$(date +%s)

# What the service imports to serve and train (app/ imports them; celery,
# redis and psycopg only for the scale-out settings, scikit-image/SciPy only
# for caffe.io helpers the service never calls, scikit-learn only to build
# sample-digits, which travels prebuilt). Versions come from requirements.txt.
PKGS=(Flask Werkzeug Jinja2 Flask-WTF WTForms Flask-Login SQLAlchemy gunicorn alembic Mako
      numpy protobuf six pydot lmdb Pillow nvidia-ml-py)

# 1. The build venv (Debian's Python 3.11 + the CUDA 13 wheels to link
#    against) and the CUDA pycaffe: sm_90 + compute_90 PTX only (the GPU
#    machines are Hopper). Cached by build_caffe.sh like every build.
command -v patchelf >/dev/null || { log "patchelf is missing: run scripts/setup.sh (Debian package list)"; exit 1; }
[ -x "$VENV/bin/python" ] || /usr/bin/python3.11 -m venv "$VENV"
stamp="$VENV/.requirements.sha256"
want=$(cat requirements.txt requirements-gpu.txt | sha256sum | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing the build venv's requirements"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r requirements.txt -r requirements-gpu.txt 2> >(grep -v 'is ignored' >&2)
  echo "$want" > "$stamp"
fi
# GPU_BUNDLE_CAFFE_GPU=0 bundles the CPU build instead: a quick way to try the
# bundling itself on a machine without nvcc (never for the GPU machine).
CAFFE_GPU=${GPU_BUNDLE_CAFFE_GPU:-1} CAFFE_CUDA_ARCHS=90 nice -n 19 bash scripts/build_caffe.sh "$VENV"
VSITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# 2. Stage.
rm -rf "$STAGE" && mkdir -p "$STAGE/bin" "$STAGE/lib" "$STAGE/src" "$STAGE/data/datasets"
SITE=$STAGE/lib/python3/dist-packages   # where Debian's site.py looks under the prefix
cp /usr/bin/python3.11 "$STAGE/bin/python3.11"
ln -s python3.11 "$STAGE/bin/python3"
ln -s python3.11 "$STAGE/bin/python"
cp /usr/bin/bwrap "$STAGE/bin/bwrap"
# The standard library, links followed (sitecustomize.py points into /etc);
# what a server never imports stays behind.
tar -C /usr/lib -ch --exclude=__pycache__ --exclude='python3.11/test' \
    --exclude='python3.11/idlelib' --exclude='python3.11/tkinter' \
    --exclude='python3.11/turtledemo' --exclude='python3.11/lib2to3/tests' \
    --exclude='python3.11/ensurepip' --exclude='python3.11/config-3.11-*' \
    --exclude='python3.11/lib2to3' --exclude='python3.11/pydoc_data' \
    --exclude='python3.11/sitecustomize.py' --exclude='python3.11/dist-packages' \
    --exclude='python3.11/site-packages' \
    --exclude='lib-dynload/_test*' --exclude='lib-dynload/xxlimited*' \
    --exclude='lib-dynload/_ctypes_test*' --exclude='lib-dynload/_xxtestfuzz*' \
    --exclude='lib-dynload/_curses*' --exclude='lib-dynload/readline*' \
    --exclude='lib-dynload/_dbm*' --exclude='lib-dynload/_gdbm*' \
    --exclude='lib-dynload/nis*' --exclude='lib-dynload/ossaudiodev*' \
    python3.11 | tar -C "$STAGE/lib" -x
mkdir -p "$SITE"
log "installing ${#PKGS[@]} packages (and their dependencies) for Python 3.11"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
    --only-binary=:all: --target "$SITE" -c requirements.txt "${PKGS[@]}" \
    2> >(grep -v 'is ignored' >&2)
rm -rf "$SITE/bin"
cp -r "$VSITE/caffe" "$SITE/caffe"
rm -f "$SITE/caffe/.build-flags"
# Size (the archive must stay under 60 MiB): no caches, no test suites, no
# type stubs, no symbol table in our own build (Debian's libraries come
# stripped already).
find "$SITE" -name __pycache__ -prune -exec rm -rf {} +
find "$SITE/numpy" -name tests -type d -prune -exec rm -rf {} +
find "$SITE" -name '*.pyi' -delete
strip --strip-unneeded "$SITE/caffe/_caffe.so"
# The app, as tracked or newly added in the working tree.
git ls-files -z --cached --others --exclude-standard -- app templates static migrations wsgi.py \
  | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
  | tar -C "$HERE" --null -T - -cf - | tar -C "$STAGE/src" -xf -
cp scripts/gpu_link_cuda.sh "$STAGE/link-cuda.sh"
chmod 755 "$STAGE/link-cuda.sh"
# sample-digits, built here (scikit-learn + Pillow) exactly as the service
# would build it on first start.
(cd "$HERE" && "$VENV/bin/python" -c 'import sys; from pathlib import Path
from app.caffe.datasets import ensure_sample_digits
ensure_sample_digits(Path(sys.argv[1]))' "$STAGE/data/datasets")

# 3. Shared libraries: copy the closure, point every ELF file at it, write
#    the manifest.
"$VENV/bin/python" scripts/gpu_bundle_closure.py "$STAGE" \
    --key "$(cat "$SITE/caffe/.build-key")"

# 4. Pack (xz, both cores but politely).
log "packing $OUT"
rm -f "$OUT.tmp"
tar -C "$BUILD" --owner=0 --group=0 --sort=name -cf - layerbench-gpu \
  | nice -n 19 xz -T2 -9 > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
size=$(stat -c %s "$OUT")
log "$(du -sh "$STAGE" | cut -f1) staged, $((size / 1048576)) MiB packed in $(( $(date +%s) - t0 )) s: $OUT"
if [ "$size" -gt $((MAX_MIB * 1048576)) ]; then
  log "the bundle is over $MAX_MIB MiB: it will not travel with the working tree"; exit 1
fi
