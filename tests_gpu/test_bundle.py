"""The GPU bundle (scripts/gpu_bundle.sh) is self-contained: proven here,
before any GPU-machine time is spent. Run by `make test-gpu-build`, after
`make gpu-bundle` (it needs the CUDA build, so `make test` leaves it out).

The bundle is unpacked once into an empty directory, and only the bundle's
interpreter runs, with a cleared environment (``env -i``: no PYTHONHOME,
PYTHONPATH or LD_LIBRARY_PATH, as in the sandbox). The CUDA runtime, cuBLAS
and cuRAND come from the nvidia-* wheels of the bundle's build venv, put in
place by the bundle's own link-cuda.sh — exactly what scripts/gpu_check.sh
does with the GPU machine's wheels (it also exports LD_LIBRARY_PATH, which
the runs here prove unnecessary). No GPU here: CPU mode of the CUDA build.
The last test runs gpu_check.sh itself, in CPU mode.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = Path(os.environ.get("GPU_BUNDLE", ROOT / "build" / "gpu-bundle.tar.xz"))
MAX_BYTES = 60 << 20


def _cuda_dirs() -> list[str]:
    # The site-packages holding the nvidia-* CUDA 13 wheels the bundle was
    # built against (scripts/gpu_bundle.sh's build venv).
    venv = ROOT / "build" / "gpu-venv"
    return [str(p) for p in sorted(venv.glob("lib/python3*/site-packages"))]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The bundle unpacked into an empty directory, CUDA libraries linked in."""
    assert BUNDLE.is_file(), f"no bundle at {BUNDLE}: run `make gpu-bundle` first"
    dest = tmp_path_factory.mktemp("bundle")
    assert not any(dest.iterdir())
    subprocess.run(["tar", "-C", str(dest), "-xJf", str(BUNDLE)], check=True, timeout=300)
    root = dest / "layerbench-gpu"
    out = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "bash", str(root / "link-cuda.sh"), *_cuda_dirs()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == root / "lib/python3/dist-packages/nvidia/cu13/lib"
    return root


def _bundle_python(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # A cleared environment: no PYTHONHOME, PYTHONPATH or LD_LIBRARY_PATH —
    # as inside the sandbox, which clears it too.
    return subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", str(root / "bin" / "python3"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd="/")


def test_bundle_is_small_enough_to_travel():
    assert BUNDLE.stat().st_size <= MAX_BYTES, f"{BUNDLE.stat().st_size >> 20} MiB"


def test_interpreter_is_the_bundles_own(bundle):
    out = _bundle_python(bundle, "-c", "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, "
                                       "sys.path, sys.version_info[:2]]))")
    assert out.returncode == 0, out.stderr
    prefix, base, path, version = json.loads(out.stdout)
    assert Path(prefix) == bundle and Path(base) == bundle
    assert version == [3, 11]
    assert all(Path(p).is_relative_to(bundle) for p in path if p), path


def test_every_elf_file_resolves_inside_the_bundle(bundle):
    # ldd of every ELF file: nothing missing, and nothing from outside but
    # glibc (a RUNPATH naming a build tree would show as a foreign path).
    glibc = re.compile(r"/(ld-linux[-\w]*|lib(c|m|mvec|pthread|dl|rt|resolv|util))\.so[.\d]*$")
    manifest = json.loads((bundle / "BUNDLE.json").read_text())
    elves = [p for p in bundle.rglob("*") if p.is_file() and not p.is_symlink()
             and p.read_bytes()[:4] == b"\x7fELF"]
    # The CUDA libraries link-cuda.sh put in are the GPU machine's own (its
    # wheels): not packed, not ours to resolve.
    cuda = bundle / "lib/python3/dist-packages/nvidia/cu13/lib"
    elves = [p for p in elves if not p.is_relative_to(cuda)]
    assert len(elves) == manifest["elf_files"]
    problems = []
    for elf in elves:
        out = subprocess.run(["env", "-i", "ldd", str(elf)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.match(r"\s*(\S+) => (.*) \(0x", line)
            if "not found" in line:
                problems.append(f"{elf.relative_to(bundle)}: {line.strip()}")
            elif m and not Path(m.group(2)).resolve().is_relative_to(bundle) and not glibc.search(m.group(2)):
                problems.append(f"{elf.relative_to(bundle)}: {line.strip()}")
    assert not problems, "\n".join(problems[:40])
    ours = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout.splitlines()[0].split()[-1]
    assert tuple(map(int, manifest["glibc_needed"].split("."))) <= tuple(map(int, ours.split(".")))


def test_selfcheck_in_cpu_mode(bundle, tmp_path):
    # import caffe, the Python layer type, the seed AccuracyLayer against
    # numpy, a short LeNet solve, and no shared object or module from outside
    # the bundle (scripts/gpu_nets.py; the GPU machine runs it on gpu:0).
    report = tmp_path / "selfcheck.json"
    out = _bundle_python(bundle, str(ROOT / "scripts" / "gpu_nets.py"), "selfcheck", "--mode", "cpu",
                         "--datasets", str(bundle / "data" / "datasets"), "--json", str(report))
    assert report.is_file(), out.stderr[-3000:]
    result = json.loads(report.read_text())
    failed = {k: v for k, v in result["checks"].items() if not v["ok"]}
    assert not failed and out.returncode == 0, (failed, out.stderr[-3000:])
    assert set(result["checks"]) == {"import", "python_layer_registered", "seed_accuracy_top1",
                                     "seed_accuracy_top3", "lenet_short_solve",
                                     "no_foreign_shared_objects", "no_foreign_python_modules"}
    assert result["checks"]["lenet_short_solve"]["val_accuracy_seed_layer"] > 0.5


def test_caffe_in_the_bundle_is_the_cuda_build(bundle, tmp_path):
    out = _bundle_python(bundle, "-c", "import caffe, json; print(json.dumps(list(caffe.layer_type_list())))")
    assert out.returncode == 0, out.stderr
    assert "Python" in json.loads(out.stdout)
    so = bundle / "lib/python3/dist-packages/caffe/_caffe.so"
    needed = subprocess.run(["patchelf", "--print-needed", str(so)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert {"libcudart.so.13", "libcublas.so.13", "libcurand.so.10"} <= set(needed)
    # sm_90 machine code plus compute_90 PTX, nothing else (and one fat
    # binary per .cu file of the fork).
    count, entries = _fatbin_entries(so, tmp_path)
    assert entries == {("sass", 90), ("ptx", 90)}, entries
    assert count >= 50


def _fatbin_entries(so: Path, tmp: Path) -> tuple[int, set[tuple[str, int]]]:
    """(number of fat binaries, {(kind, arch)}) in ``so``'s .nv_fatbin section.

    The layout nvcc writes (no cuobjdump on this machine): fat binaries, each
    a 16-byte header (magic 0xBA55ED50, version, header size, payload size)
    followed by entries whose headers hold the kind (1 PTX, 2 ELF) at byte 0,
    their own header size at 4, the payload size at 8 and the arch at 28.
    """
    import struct
    dump = tmp / "fatbin"
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.nv_fatbin", str(so), str(dump)], check=True)
    data, off, count, found = dump.read_bytes(), 0, 0, set()
    while off + 16 <= len(data):
        magic, _, head, size = struct.unpack_from("<IHHQ", data, off)
        if magic != 0xBA55ED50:
            off += 8 - off % 8   # alignment padding between fat binaries
            continue
        count, entry, end = count + 1, off + head, off + head + size
        while entry < end:
            kind, _, entry_head, payload = struct.unpack_from("<HHIQ", data, entry)
            found.add(({1: "ptx", 2: "sass"}.get(kind, str(kind)), struct.unpack_from("<I", data, entry + 28)[0]))
            entry += entry_head + payload
        off = end
    return count, found


@pytest.mark.slow
def test_gpu_check_dry_run_in_cpu_mode(tmp_path):
    # scripts/gpu_check.sh end to end, here, in CPU mode with short figures:
    # unpack, link CUDA, smoke, the service from the bundle with a job
    # through the REST API to done inside bubblewrap, service vs bare
    # pycaffe, figures. What the GPU machine will run, minus the GPU.
    out_dir = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "OUT": str(out_dir), "GPU_BUNDLE": str(BUNDLE), "GPU_CHECK_DEVICE": "cpu",
           "GPU_CHECK_QUICK": "1", "GPU_CHECK_CUDA_DIRS": ":".join(_cuda_dirs()),
           # a 2-core machine shared by several people, not the GPU machine's 16 cores
           "GPU_CHECK_TOTAL": "1200", "GPU_CHECK_LIMIT_SCALE": "4"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=1300, cwd=ROOT)
    doc = json.loads((out_dir / "gpu_check.json").read_text())
    log = proc.stdout[-4000:]
    assert proc.returncode == 0, log
    assert all(s["rc"] == 0 for s in doc["steps"].values()), (doc["steps"], log)
    assert doc["smoke"]["ok"], doc["smoke"]
    svc = doc["service"]
    assert svc["ok"] and svc["job_done"] and svc["containment"] == "bwrap", svc
    assert svc["job"]["metrics"]["val"]["accuracy"] is not None
    assert svc["service_vs_bare"]["ratio"] > 0
    runs = doc["figures"]["runs"]
    assert {(r["net"], r["mode"]) for r in runs if r.get("ips")} == \
        {("lenet", "cpu"), ("alexnet_small", "cpu"), ("lenet_python_layer", "cpu")}, runs
    assert (out_dir / "logs.tar.gz").is_file()
