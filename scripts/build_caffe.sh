#!/usr/bin/env bash
# Build pycaffe (with the Python layer) from the pinned brocolli-caffe sdist and
# install the `caffe` package into the project's virtualenv.
#
#   scripts/build_caffe.sh VENV_DIR
#
# Environment:
#   CAFFE_GPU=1        build with CUDA (nvcc + cuBLAS/cuRAND); default 0 (CPU)
#   CAFFE_CACHE_DIR    where builds are cached (default ~/.cache/caffe-service)
#   CAFFE_JOBS         parallel compile jobs (default: nproc)
#
# The build is cached outside the checkout, keyed by the sdist hash, the
# patches, the recipe version, the compile flags and the numpy ABI, so a second
# setup on the same machine only copies the finished package (seconds).
# The sdist's setup.py is never used: it insists on conda and Python <= 3.9.
set -euo pipefail

VENV=${1:?usage: build_caffe.sh VENV_DIR}
VENV=$(cd "$VENV" && pwd)
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY="$VENV/bin/python"

SDIST_NAME=brocolli-caffe
SDIST_VERSION=9.0.2
SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a
# Bump when the build steps below change in a way that changes the result
# (the cache key holds this, not the script's text, so comments are free).
RECIPE=2
CAFFE_GPU=${CAFFE_GPU:-0}
CACHE=${CAFFE_CACHE_DIR:-$HOME/.cache/caffe-service}
JOBS=${CAFFE_JOBS:-$(nproc)}

log() { printf '[build_caffe] %s\n' "$*" >&2; }

mkdir -p "$CACHE/sdist"
sdist="$CACHE/sdist/$SDIST_NAME-$SDIST_VERSION.tar.gz"
if [ ! -f "$sdist" ] || ! echo "$SDIST_SHA256  $sdist" | sha256sum -c --status; then
  log "downloading $SDIST_NAME==$SDIST_VERSION (sdist) with pip"
  tmp=$(mktemp -d)
  "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
      "$SDIST_NAME==$SDIST_VERSION" -d "$tmp" 2>/dev/null \
    || "$PY" -m pip download --quiet --no-deps --no-binary :all: \
      "$SDIST_NAME==$SDIST_VERSION" -d "$tmp"
  mv "$tmp/$SDIST_NAME-$SDIST_VERSION.tar.gz" "$sdist"
  rm -rf "$tmp"
fi
echo "$SDIST_SHA256  $sdist" | sha256sum -c --status \
  || { log "sha256 mismatch for $sdist"; exit 1; }

PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$PY" -c 'import numpy; print(numpy.get_include())')
NPVER=$("$PY" -c 'import numpy; print(numpy.__version__)')
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# ALLOW_LMDB_NOLOCK: datasets are mounted read-only in the sandbox, where
# LMDB's reader lock file cannot be opened; they never change once built, so
# lock-free readers are safe.
CXXFLAGS="-I$PYINC -I$NPINC -I/usr/include/hdf5/serial \
 -DUSE_LMDB -DUSE_LEVELDB -DUSE_HDF5 -DWITH_PYTHON_LAYER -DBOOST_BIND_GLOBAL_PLACEHOLDERS\
 -DALLOW_LMDB_NOLOCK"
LDFLAGS="-L/usr/lib/x86_64-linux-gnu/hdf5/serial"
# No RUNPATH at all: libraries come from the system, and CMake would pad a
# build-tree RUNPATH with empty entries (which mean "the current directory").
CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DCPU_ONLY=ON -DCMAKE_SKIP_RPATH=ON)
if [ "$CAFFE_GPU" = 1 ]; then
  # shellcheck source=cuda_env.sh
  source "$HERE/scripts/cuda_env.sh"
  CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DCPU_ONLY=OFF "${CUDA_CMAKE_ARGS[@]}")
  CXXFLAGS="$CXXFLAGS $CUDA_CXXFLAGS"
  LDFLAGS="$LDFLAGS $CUDA_LDFLAGS"
fi

PATCHES=("$HERE"/patches/caffe/*.patch)
[ "$CAFFE_GPU" = 1 ] && PATCHES+=("$HERE"/patches/caffe-cuda/*.patch)
key=$( { echo "$SDIST_SHA256 recipe$RECIPE"; cat "${PATCHES[@]}";
         [ "$CAFFE_GPU" = 1 ] && cat "$HERE/scripts/cuda_env.sh";
         # The venv's path (numpy's include dir lives there) is not part of
         # the key: every clone of the project shares one cached build.
         flags="$CXXFLAGS $LDFLAGS ${CMAKE_ARGS[*]}"
         echo "${flags//$VENV/VENV} numpy$NPVER $(uname -m)"; } \
       | sha256sum | cut -c1-16)
variant=$([ "$CAFFE_GPU" = 1 ] && echo gpu || echo cpu)
out="$CACHE/build-$variant-$key"
# One build per key at a time: concurrent setups of the same build (make run
# + make test) would share and delete each other's work directory; other
# variants (a GPU build) do not block this one.
exec 9>"$CACHE/.lock-$variant-$key"
flock 9

if [ ! -f "$out/caffe/_caffe.so" ]; then
  log "building pycaffe ($variant, key $key) with $JOBS jobs; this takes several minutes"
  work="$CACHE/work-$variant-$key"
  src="$work/$SDIST_NAME-$SDIST_VERSION"
  if [ -f "$work/.configured" ]; then
    # An interrupted build of this very key (the CUDA one takes hours on a
    # small shared machine): resume it. The newest objects may be half
    # written by the compilers that were killed, so they are rebuilt.
    log "resuming the interrupted build in $work"
    find "$work/build" -name '*.o' -printf '%T@ %p\n' | sort -n | tail -n "$((JOBS + 1))" \
      | cut -d' ' -f2- | xargs -r rm -f
  else
    rm -rf "$work" && mkdir -p "$work"
    tar -xzf "$sdist" -C "$work"
    for p in "${PATCHES[@]}"; do
      log "patch $(basename "$p")"
      patch -p1 -s -d "$src" < "$p"
    done
    # The sdist ships a caffe.pb.h from an old protoc; the build generates its
    # own, and the stale copy must never be picked up.
    rm -f "$src/include/caffe/proto/caffe.pb.h" "$src/python/caffe/proto/caffe_pb2.py"
    rm -rf "$src/python/caffe/__pycache__"
    mkdir -p "$work/build"
    (cd "$work/build" && cmake "$src" "${CMAKE_ARGS[@]}" \
        -DCMAKE_CXX_FLAGS="$CXXFLAGS" -DCMAKE_SHARED_LINKER_FLAGS="$LDFLAGS" >cmake.log 2>&1) \
      || { tail -40 "$work/build/cmake.log" >&2; exit 1; }
    touch "$work/.configured"
  fi
  (cd "$work/build" && make -j"$JOBS" pycaffe >make.log 2>&1) \
    || { grep -B2 -A8 -m5 'error' "$work/build/make.log" >&2 || tail -40 "$work/build/make.log" >&2; exit 1; }
  stage="$out.tmp"
  rm -rf "$stage" && mkdir -p "$stage"
  cp -r "$src/python/caffe" "$stage/caffe"
  rm -rf "$stage/caffe/test" "$stage/caffe/__pycache__"
  rm -f "$stage/caffe/_caffe.so" "$stage/caffe/_caffe.cpp"
  cp "$work/build/lib/_caffe.so" "$stage/caffe/_caffe.so"
  cp "$src/LICENSE" "$stage/caffe/LICENSE"
  # What the compiler and linker were told, kept beside the build so a test
  # can prove no flag names a path outside the system, venv and cache.
  cat "$work/build/python/CMakeFiles/pycaffe.dir/flags.make" \
      "$work/build/python/CMakeFiles/pycaffe.dir/link.txt" > "$stage/caffe/.build-flags"
  rm -rf "$out" && mv "$stage" "$out"
  rm -rf "$work"
  log "built into $out"
fi

# Install: replace the package in the venv only when it differs.
if ! cmp -s "$out/caffe/_caffe.so" "$SITE/caffe/_caffe.so" 2>/dev/null \
   || [ "$(cat "$SITE/caffe/.build-key" 2>/dev/null)" != "$variant-$key" ]; then
  rm -rf "$SITE/caffe"
  cp -r "$out/caffe" "$SITE/caffe"
  echo "$variant-$key" > "$SITE/caffe/.build-key"
  log "installed caffe ($variant-$key) into $SITE"
fi
