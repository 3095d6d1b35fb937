"""Build of se_kernels._C: the op schemas, the CPU kernels and (when a CUDA toolkit and a
CUDA build of torch are present) the CUDA kernels.

The CUDA decision is made from the toolkit and ``torch.version.cuda``, never from a visible
GPU, so GPU-less machines compile (and CI checks) the CUDA sources too.

Environment switches:
  SE_KERNELS_SKIP_CUDA=1     build no CUDA sources even where a toolkit is present
  SE_KERNELS_SKIP_EXT=1      build no extension at all (reference and Triton backends only)
  TORCH_CUDA_ARCH_LIST       CUDA archs, e.g. "9.0a" (default: "8.0;9.0a")
  SE_KERNELS_PTXAS_VERBOSE=1 pass -Xptxas -v (register/spill report in the build log)
  CUDA_HOME                  the toolkit's folder (found from nvcc when unset)
  SE_KERNELS_BUILD_TEMP      ninja's build folder (default: build/temp beside this file)

Builds are incremental: ninja's objects stay in build/temp, not in the temporary folder pip
gives each build, so a rebuild compiles only the sources (or headers) that changed; ninja
also recompiles a source whose compile command changed (flags, archs).
"""

import glob
import os
import platform
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))
from find_cuda import find_cuda_home, wheel_cuda_includes  # noqa: E402
DEFAULT_CUDA_ARCHS = "8.0;9.0a"


def _log(msg: str) -> None:
    print(f"[se_kernels build] {msg}", file=sys.stderr, flush=True)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _build_ext_class(base):
    """torch's BuildExtension with a build folder that outlives the build."""

    class PersistentBuildExtension(base):
        def build_extensions(self):
            self.build_temp = os.environ.get("SE_KERNELS_BUILD_TEMP") or str(
                ROOT / "build" / "temp")
            os.makedirs(self.build_temp, exist_ok=True)
            super().build_extensions()

    return PersistentBuildExtension


def _extensions():
    if _flag("SE_KERNELS_SKIP_EXT"):
        _log("SE_KERNELS_SKIP_EXT=1: building no extension (reference and Triton backends only)")
        return [], {}

    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # must be set before cpp_extension is imported

    import torch
    from torch.utils import cpp_extension

    # Sources by glob, relative to this folder (setuptools insists).
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/python_module.cpp"] + sorted(
        glob.glob("csrc/cpu/*.cpp", root_dir=ROOT))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu", root_dir=ROOT))

    use_cuda = True
    why = ""
    if _flag("SE_KERNELS_SKIP_CUDA"):
        use_cuda, why = False, "SE_KERNELS_SKIP_CUDA=1"
    elif torch.version.cuda is None:
        use_cuda, why = False, f"torch {torch.__version__} is not a CUDA build"
    elif cuda_home is None:
        use_cuda, why = False, "no CUDA toolkit (nvcc) found"
    elif not cuda_sources:
        use_cuda, why = False, "no CUDA sources in csrc/cuda"

    # -Wno-unknown-pragmas: ATen's vec headers carry `#pragma unroll`, which g++ ignores.
    # -fopenmp: at::parallel_for is inline and runs serially in a file compiled without it
    # (libgomp.so.1 then resolves to the copy torch already loaded).
    cxx = ["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-unknown-pragmas",
           "-fvisibility=hidden", "-fopenmp"]
    link = ["-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64"):
        # The CPU kernels use at::vec with AVX2; se_kernels/_extension.py refuses to load the
        # library on a CPU without AVX2.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    include_dirs = [str(ROOT / "csrc" / "include")]

    if use_cuda:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        _log(f"CUDA build: toolkit {cuda_home}, torch CUDA {torch.version.cuda}, archs {archs}")
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr",
                "-Xcompiler=-Wall", "-Xcompiler=-Wno-unused-parameter"]
        if _flag("SE_KERNELS_PTXAS_VERBOSE"):
            nvcc += ["-Xptxas=-v"]
        include_dirs += wheel_cuda_includes()
        ext = cpp_extension.CUDAExtension(
            "se_kernels._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DSE_KERNELS_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=link,
            py_limited_api=True,
        )
    else:
        _log(f"CPU-only build ({why})")
        ext = cpp_extension.CppExtension(
            "se_kernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
            py_limited_api=True,
        )
    return [ext], {"build_ext": _build_ext_class(cpp_extension.BuildExtension)}


ext_modules, cmdclass = _extensions()

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
