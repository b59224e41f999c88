# Sourced by build_caffe.sh for CAFFE_GPU=1: where nvcc and the CUDA
# libraries are, which GPU architectures to build, how to link.
# cuBLAS, cuRAND and the CUDA runtime come from the nvidia-* wheels in the
# venv (requirements-gpu.txt); nvcc from the system (CUDACXX, PATH or
# /usr/local/cuda*).
# CUDA_HOME wins; else the toolkit directory of a real nvcc (the one on PATH
# may be a wrapper script outside the toolkit).
CUDA_HOME=${CUDA_HOME:-$(ls -d /usr/local/cuda-13*/ /usr/local/cuda/ 2>/dev/null | head -1)}
CUDA_HOME=${CUDA_HOME%/}
NVCC=${CUDACXX:-$CUDA_HOME/bin/nvcc}
[ -x "$NVCC" ] && [ -f "$CUDA_HOME/include/crt/host_defines.h" ] \
  || { echo "CAFFE_GPU=1 needs the CUDA 13 toolkit (nvcc); set CUDA_HOME" >&2; exit 1; }
NVLIB=$("$PY" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
[ -d "$NVLIB/lib" ] || { echo "nvidia-* CUDA 13 wheels missing in the venv" >&2; exit 1; }
# sm_75 (Turing) through sm_90 (Hopper) as SASS, plus compute_90 PTX for newer GPUs.
# CAFFE_CUDA_ARCHS narrows it (the GPU bundle builds "90" only: sm_90 SASS +
# compute_90 PTX, a fifth of the compile time and size); it is part of the
# cache key through the CMake arguments.
CUDA_ARCHS=${CAFFE_CUDA_ARCHS:-"75-real;80-real;86-real;89-real;90"}
CUDA_CMAKE_ARGS=(-DCMAKE_CUDA_COMPILER="$NVCC" -DCAFFE_CUDA_ARCHITECTURES="$CUDA_ARCHS"
                 -DCMAKE_CUDA_FLAGS="-I$NVLIB/include -I$CUDA_HOME/include -DUSE_LMDB -DUSE_LEVELDB -DUSE_HDF5 -DWITH_PYTHON_LAYER -DBOOST_BIND_GLOBAL_PLACEHOLDERS -I/usr/include/hdf5/serial -Xcompiler=-fPIC"
                 -DCAFFE_CUDA_LIBRARIES="-L$NVLIB/lib;-l:libcudart.so.13;-l:libcublas.so.13;-l:libcurand.so.10"
                 -DCAFFE_CUDA_RPATH='$ORIGIN/../nvidia/cu13/lib')
CUDA_CXXFLAGS="-I$CUDA_HOME/include -I$NVLIB/include"
# _caffe.so finds the wheels' libraries beside it in site-packages (rpath
# $ORIGIN/../nvidia/cu13/lib, set by the patch's BUILD_RPATH).
CUDA_LDFLAGS="-L$NVLIB/lib"
