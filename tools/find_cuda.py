#!/usr/bin/env python3
"""Where the CUDA toolkit and the CUDA library headers of torch's nvidia wheels are.

Used by setup.py and tools/cmake_check.sh. Run as a script it prints the toolkit's folder
(nothing if there is none).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path


def find_cuda_home() -> str | None:
    """The toolkit's own folder. torch guesses the parent of the first `nvcc` on PATH, which
    is wrong when that nvcc is a wrapper script (as on our machines): ask the toolkit."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
        try:  # a wrapper script: nvcc itself knows where it lives
            out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60).stderr
            for line in out.splitlines():
                if "TOP=" in line:
                    candidates.append(Path(line.split("TOP=", 1)[1].strip()).resolve())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [Path("/usr/local/cuda")] + [Path(p) for p in sorted(glob.glob("/usr/local/cuda-*"))]
    for c in candidates:
        if (c / "bin" / "nvcc").exists() and (c / "include" / "cuda_runtime.h").exists():
            return str(c)
    return None


def wheel_cuda_includes() -> list[str]:
    """Headers of torch's nvidia-* wheels (cuBLAS, cuSPARSE, ...), which ATen's CUDA headers
    include and a bare system toolkit may lack."""
    out = []
    try:
        import nvidia  # namespace package installed with CUDA builds of torch

        for base in nvidia.__path__:
            out += sorted(glob.glob(os.path.join(base, "cu*", "include")))
            out += sorted(glob.glob(os.path.join(base, "*", "include")))
    except ImportError:
        pass
    return [p for p in dict.fromkeys(out) if os.path.isdir(p)]


def wheel_cuda_library(stem: str) -> str | None:
    """A CUDA library (e.g. "libnvrtc") from torch's nvidia wheels, or None."""
    try:
        import nvidia
    except ImportError:
        return None
    for base in nvidia.__path__:
        hits = sorted(glob.glob(os.path.join(base, "*", "lib", f"{stem}.so*")))
        hits = [h for h in hits if ".alt." not in h and "builtins" not in h]
        if hits:
            return hits[0]
    return None


if __name__ == "__main__":
    print(find_cuda_home() or "")
