"""Make a staged GPU bundle self-contained: copy the shared-library closure of
every ELF file in it into ``lib/so``, point each ELF file there (RUNPATH,
relative to ``$ORIGIN``), and write ``BUNDLE.json``.

    python scripts/gpu_bundle_closure.py STAGE --key BUILD_KEY

Left out on purpose: glibc (every Linux machine has one; the manifest says
which version the bundle needs) and the CUDA libraries the GPU machine brings
in its own wheels and driver (link-cuda.sh puts them in place there).
Called by scripts/gpu_bundle.sh.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

# glibc's own libraries: never bundled (the loader must match the libc).
GLIBC = re.compile(r"^(ld-linux[-\w]*\.so|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|"
                   r"libanl|libBrokenLocale|libnss_\w+|libthread_db|libc_malloc_debug|libmemusage)"
                   r"\.so(\.\d+)*$")
# Brought by the GPU machine (wheels, driver): link-cuda.sh places them.
DEVICE = re.compile(r"^(libcuda|libcudart|libcublas|libcublasLt|libcurand|libnvidia-ml|"
                    r"libnvidia-[\w-]+)\.so(\.\d+)*$")


def is_elf(path: Path) -> bool:
    """Whether ``path`` is a regular ELF file (not a link)."""
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"\x7fELF"


def ldd(path: Path) -> dict[str, str | None]:
    """soname -> resolved path (None: not found) for ``path``'s whole closure."""
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
    found: dict[str, str | None] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (not found|(\S+) \(0x)", line)
        if m:
            found[m.group(1)] = None if m.group(2) == "not found" else m.group(3)
    return found


def needed(path: Path) -> list[str]:
    """The DT_NEEDED entries of ``path``."""
    out = subprocess.run(["patchelf", "--print-needed", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def runpath(path: Path) -> list[str]:
    """The RUNPATH/RPATH entries of ``path``."""
    out = subprocess.run(["patchelf", "--print-rpath", str(path)], capture_output=True, text=True,
                         check=True).stdout.strip()
    return [p for p in out.split(":") if p]


def glibc_needed(path: Path) -> tuple[int, ...]:
    """The newest GLIBC_x.y symbol version ``path`` asks for."""
    out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True).stdout
    versions = [tuple(int(x) for x in v.split(".")) for v in re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)", out)]
    return max(versions, default=(0,))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", type=Path)
    ap.add_argument("--key", default="")
    args = ap.parse_args()
    stage = args.stage.resolve()
    so_dir = stage / "lib" / "so"
    so_dir.mkdir(parents=True, exist_ok=True)

    elves = sorted(p for p in stage.rglob("*") if is_elf(p))
    copied: dict[str, str] = {}
    unresolved: dict[str, list[str]] = {}
    for elf in elves:
        for soname, where in ldd(elf).items():
            if GLIBC.match(soname) or DEVICE.match(soname):
                continue
            if where is None:
                unresolved.setdefault(soname, []).append(str(elf.relative_to(stage)))
                continue
            real = Path(where).resolve()
            if real.is_relative_to(stage) or soname in copied:
                continue   # a wheel's own library (numpy.libs, pillow.libs) or already here
            shutil.copy2(real, so_dir / soname)
            (so_dir / soname).chmod(0o755)
            copied[soname] = str(real)
    if unresolved:
        raise SystemExit(f"unresolved libraries: {json.dumps(unresolved, indent=1)}")

    # Every ELF file (the copies included) finds its bundled needs through a
    # RUNPATH relative to itself; absolute entries (build trees) are dropped.
    bundled = set(os.listdir(so_dir))
    all_elves = sorted(p for p in stage.rglob("*") if is_elf(p))
    for elf in all_elves:
        keep = [p for p in runpath(elf) if p.startswith("$ORIGIN")]
        if bundled & set(needed(elf)):
            rel = os.path.relpath(so_dir, elf.parent)
            ours = "$ORIGIN" if rel == "." else f"$ORIGIN/{rel}"
            if ours not in keep:
                keep.append(ours)
        if keep != runpath(elf):
            subprocess.run(["patchelf", "--set-rpath", ":".join(keep), str(elf)], check=True)

    glibc = max(glibc_needed(p) for p in all_elves)
    manifest = {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "caffe_build": args.key,
        "cuda_archs": "sm_90 SASS + compute_90 PTX",
        "python": "3.11 (Debian 12), prefix found from bin/python3.11's location",
        "glibc_needed": ".".join(map(str, glibc)),
        "device_libraries": ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13",
                             "libcurand.so.10", "libcuda.so.1 (driver)"],
        "bundled_libraries": dict(sorted(copied.items())),
        "elf_files": len(all_elves),
    }
    (stage / "BUNDLE.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"[gpu_bundle] {len(copied)} libraries bundled for {len(all_elves)} ELF files; "
          f"needs glibc >= {manifest['glibc_needed']}")


if __name__ == "__main__":
    main()
