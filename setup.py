"""Build cgd's Cython kernels (``src/*.pyx`` -> ``cgd.<name>`` extension modules).

OpenMP is used when the compiler can both compile and *link* an OpenMP program;
otherwise the kernels are built serially and a warning says so. Environment
switches:

``CGD_PROFILE=1``
    Cython line tracing inside the kernels (for cProfile / line_profiler).
    Much slower: never for benchmarks.
``CGD_DISABLE_OPENMP=1``
    Force the serial build (used to test the fallback).
``CGD_LIBOMP_PREFIX``
    macOS: where libomp is installed (default: Homebrew's ``/opt/homebrew/opt/libomp``).

The kernels are cythonized only when extensions are built (``build_ext``, a wheel, an
editable install), so ``sdist`` and metadata commands need no Cython and leave no
generated C behind.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings
from glob import glob
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
# setuptools wants source paths relative to the project, and its build/ and *.egg-info
# paths are relative to the working directory: so `python path/to/setup.py ...` run
# from elsewhere must work from here (pip's build backend already runs in this folder).
os.chdir(HERE)

KERNEL_SOURCES = sorted(glob(os.path.join("src", "*.pyx")))
if not KERNEL_SOURCES:
    # Without kernels setuptools would happily make a pure-Python wheel that installs
    # "successfully" and then fails at `import cgd`: refuse instead.
    sys.exit(
        f"cgd: no kernel sources (src/*.pyx) under {HERE}. cgd cannot be built without "
        "its Cython kernels: build from a complete git clone or from the sdist published "
        "for this version (an incomplete sdist lacks src/)."
    )

OPENMP_TEST_PROGRAM = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n > 0);
        return 0;
    }
    """
)


def _openmp_flags(compiler):
    """Return (compile_args, link_args) for OpenMP, or None if it does not link."""
    if os.environ.get("CGD_DISABLE_OPENMP", "0") not in ("", "0"):
        return None
    ctype = compiler.compiler_type
    if ctype == "msvc":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        # Apple clang has no bundled OpenMP; libomp (e.g. Homebrew) must be found.
        prefix = os.environ.get("CGD_LIBOMP_PREFIX") or "/opt/homebrew/opt/libomp"
        candidates = [
            (["-fopenmp"], ["-fopenmp"]),
            (
                ["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
                [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"],
            ),
        ]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]

    for cflags, ldflags in candidates:
        tmp = tempfile.mkdtemp(prefix="cgd_openmp_")
        try:
            src = os.path.join(tmp, "test_openmp.c")
            with open(src, "w") as f:
                f.write(OPENMP_TEST_PROGRAM)
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
            exe = os.path.join(tmp, "test_openmp")
            compiler.link_executable(objs, exe, extra_postargs=ldflags)
            exe_path = exe + (".exe" if ctype == "msvc" else "")
            out = subprocess.run([exe_path], capture_output=True, text=True, timeout=60)
            if out.returncode == 0 and out.stdout.strip() == "1":
                return cflags, ldflags
        except Exception:  # compile, link or run failed: try the next candidate
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return None


class BuildExt(build_ext):
    """build_ext that cythonizes the kernels, then adds OpenMP flags after checking
    that they link."""

    def run(self):
        # The Extension objects carry setuptools' per-build state (set by
        # finalize_options), so they keep their identity: only their sources change.
        generated = {ext.name: ext for ext in _cythonize(self.extensions, self.force)}
        for ext in self.extensions:
            ext.sources = list(generated[ext.name].sources)
        super().run()

    def build_extensions(self):
        flags = _openmp_flags(self.compiler)
        if flags is None and os.environ.get("CGD_DISABLE_OPENMP", "0") not in ("", "0"):
            print("cgd: OpenMP disabled by CGD_DISABLE_OPENMP (serial build)", file=sys.stderr)
        elif flags is None:
            warnings.warn(
                "cgd: the C compiler cannot build and link an OpenMP program; "
                "building the kernels WITHOUT OpenMP (every fit runs on one thread). "
                "Install an OpenMP runtime (libgomp / libomp) and rebuild to use all cores.",
                stacklevel=1,
            )
            print("cgd: OpenMP disabled (serial build)", file=sys.stderr)
        else:
            print(f"cgd: OpenMP enabled with {' '.join(flags[0])}", file=sys.stderr)
        if self.compiler.compiler_type == "msvc":
            opt = ["/O2"]
        else:
            # -O3 for vectorised inner loops; no -ffast-math: it would drop the
            # isfinite() divergence checks and IEEE semantics the tests rely on.
            # -fno-math-errno only stops sqrt() from setting errno (nothing reads it),
            # which lets the optimizer steps' sqrt vectorise; results are unchanged.
            # Frame pointers keep py-spy --native / perf call stacks readable.
            opt = ["-O3", "-fno-math-errno", "-fno-omit-frame-pointer",
                   "-Wno-unused-function", "-Wno-unreachable-code"]
        for ext in self.extensions:
            ext.extra_compile_args = opt + (flags[0] if flags else [])
            ext.extra_link_args = list(flags[1]) if flags else []
        # build_ext skips a module whose output is newer than its C source, even if it
        # was compiled with other flags: switching CGD_DISABLE_OPENMP (or the compiler's
        # OpenMP support) would otherwise leave the previous build's modules in a wheel.
        # So a change of flags since this build folder's last build recompiles all.
        stamp = Path(self.build_temp) / "cgd_compile_flags"
        flags_now = repr((self.compiler.compiler_type, opt, flags))
        if not stamp.exists() or stamp.read_text() != flags_now:
            self.force = True
        super().build_extensions()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(flags_now)


def _cythonize(extensions, force):
    """C sources for the kernel extensions (release or CGD_PROFILE=1 line tracing)."""
    from Cython.Build import cythonize

    profile = os.environ.get("CGD_PROFILE", "0") not in ("", "0")
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    directives = {
        "language_level": 3,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
        "nonecheck": False,
        "embedsignature": True,
    }
    if profile:
        directives.update({"linetrace": True, "profile": True, "binding": True})
        macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    else:
        # Release: no tracing hooks even if the generated C came from a profile build.
        macros += [("CYTHON_TRACE", "0"), ("CYTHON_TRACE_NOGIL", "0"), ("CYTHON_PROFILE", "0")]
    macros.append(("CGD_PROFILE_BUILD", "1" if profile else "0"))
    for ext in extensions:
        ext.define_macros = list(macros)

    # Cython regenerates C only when sources are newer; directives do not count. So
    # switching between release and profile builds forces regeneration once. The stamp
    # sits in the build tree of this source tree (a clone or an unpacked sdist), and is
    # written only once the C matches the mode.
    stamp = HERE / "build" / "cgd_build_mode"
    mode = "profile" if profile else "release"
    force = force or not stamp.exists() or stamp.read_text() != mode

    generated = cythonize(
        extensions,
        force=force,
        include_path=["src"],
        compiler_directives=directives,
        # Rebuild when a .pxd changes; annotate with CGD_ANNOTATE=1 for the HTML view.
        annotate=os.environ.get("CGD_ANNOTATE", "0") not in ("", "0"),
        quiet=True,
    )
    stamp.parent.mkdir(exist_ok=True)
    stamp.write_text(mode)
    return generated


setup(
    ext_modules=[
        Extension(f"cgd.{Path(pyx).stem}", [pyx], include_dirs=["src"])
        for pyx in KERNEL_SOURCES
    ],
    cmdclass={"build_ext": BuildExt},
)
