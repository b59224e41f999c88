#!/usr/bin/env bash
# Put this machine's CUDA 13 runtime, cuBLAS and cuRAND where the bundle's
# pycaffe looks for them, and print the directory.
#
#   link-cuda.sh DIR...      (shipped in the GPU bundle as link-cuda.sh)
#
# DIRs are searched in order: site-packages folders holding the nvidia-*
# wheels (nvidia/cu13/lib, nvidia/*/lib), or plain library folders.
#
# Why not LD_LIBRARY_PATH alone: _caffe.so finds these libraries through its
# RUNPATH ($ORIGIN/../nvidia/cu13/lib, i.e. inside the bundle), and the
# sandbox that trains jobs clears the environment and shows only the bundle,
# /usr and the job's own folders — so the libraries must live inside the
# bundle. They are hard links where the file system allows (no copy), else
# copies. The driver's libcuda.so.1 is only linked in when the loader's cache
# does not know it (then the sandbox could not find it either).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: link-cuda.sh DIR..." >&2; exit 2; }
R=$(cd "$(dirname "$0")" && pwd)
[ -d "$R/lib/python3/dist-packages/caffe" ] || R=${GPU_BUNDLE_ROOT:?run the bundle\'s own link-cuda.sh}
DEST=$R/lib/python3/dist-packages/nvidia/cu13/lib
mkdir -p "$DEST"

find_lib() {   # NAME DIR... -> the first match, or nothing
  local name=$1 d c; shift
  for d in "$@"; do
    for c in "$d/nvidia/cu13/lib/$name" "$d"/nvidia/*/lib/"$name" "$d/$name"; do
      [ -e "$c" ] && { readlink -f "$c"; return 0; }
    done
  done
  return 0
}

place() {   # SRC NAME: hard link, else copy, into DEST
  rm -f "$DEST/$2"
  ln "$1" "$DEST/$2" 2>/dev/null || cp "$1" "$DEST/$2"
}

missing=()
for name in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  src=$(find_lib "$name" "$@")
  if [ -z "$src" ]; then missing+=("$name"); continue; fi
  place "$src" "$name"
  echo "link-cuda: $name <- $src" >&2
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "link-cuda: NOT FOUND in $*: ${missing[*]}" >&2
  exit 1
fi

# The driver (only where one is installed: a machine without a GPU has none,
# and CPU mode never loads it).
if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 \
           /usr/local/cuda/compat; do
    if [ -e "$d/libcuda.so.1" ]; then
      src=$(readlink -f "$d/libcuda.so.1")
      case $src in
        /usr/*) ln -sf "$src" "$DEST/libcuda.so.1" ;;   # /usr is visible in the sandbox
        *) place "$src" libcuda.so.1 ;;
      esac
      echo "link-cuda: libcuda.so.1 <- $src (not in the loader's cache)" >&2
      break
    fi
  done
fi
echo "$DEST"
