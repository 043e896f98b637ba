"""Check what cgd's sdist and wheel contain (used by tools/check_dist.sh).

``python tools/dist_contents.py sdist DIST.tar.gz --repo CLONE``
    The sdist carries every kernel source and header of the clone (src/*.pyx, src/**/*.pxd),
    every test module and helper (tests/*.py), LICENSE, README.md, pyproject.toml,
    setup.py and MANIFEST.in, and no generated or compiled file (*.c, *.so, ...): the
    build must regenerate the C from the .pyx sources.

``python tools/dist_contents.py wheel DIST.whl --repo CLONE [--bundled-openmp]``
    The wheel is platform-specific (not ``none-any``), carries one compiled extension
    module per kernel source of the clone (cgd/<name>.<ext suffix>) and the license,
    and with ``--bundled-openmp`` an OpenMP runtime bundled by the repair tool
    (cgd.libs/libgomp-*.so* from auditwheel). Prints the wheel's size.

Exits nonzero, listing every problem, when a check fails.
"""

import argparse
import fnmatch
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

GENERATED = ("*.c", "*.cpp", "*.so", "*.pyd", "*.dylib", "*.o", "*.pyc", "*.html")


def _clone_files(repo, pattern):
    return sorted(p.relative_to(repo).as_posix() for p in repo.glob(pattern))


def check_sdist(path, repo):
    with tarfile.open(path) as tar:
        names = tar.getnames()
    if not names:
        return [f"{path} is empty"]
    root = PurePosixPath(names[0]).parts[0]
    members = {PurePosixPath(n).relative_to(root).as_posix() for n in names if n != root}
    required = (["LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in"]
                + _clone_files(repo, "src/*.pyx") + _clone_files(repo, "src/**/*.pxd")
                + _clone_files(repo, "tests/*.py"))
    problems = [f"sdist lacks {f}" for f in required if f not in members]
    if not _clone_files(repo, "src/*.pyx"):
        problems.append(f"no src/*.pyx in the clone {repo}: nothing to compare against")
    if not any(f.startswith("tests/test_") for f in members):
        problems.append("sdist carries no tests/test_*.py")
    problems += [f"sdist carries a generated or compiled file: {f}" for f in sorted(members)
                 if any(fnmatch.fnmatch(PurePosixPath(f).name, g) for g in GENERATED)]
    print(f"sdist {Path(path).name}: {len(members)} entries, {Path(path).stat().st_size / 1e3:.0f} kB; "
          f"{sum(f.startswith('src/') for f in members)} under src/, "
          f"{sum(f.startswith('tests/') for f in members)} under tests/")
    return problems


def check_wheel(path, repo, bundled_openmp):
    name = Path(path).name
    problems = []
    # name-version-pythontag-abitag-platformtag.whl
    tags = name[:-len(".whl")].split("-")[-3:]
    if tags[1] == "none" or tags[2] == "any":
        problems.append(f"{name} is not platform-specific (tags {'-'.join(tags)}): no kernels")
    with zipfile.ZipFile(path) as whl:
        members = whl.namelist()
    for pyx in _clone_files(repo, "src/*.pyx"):
        stem = PurePosixPath(pyx).stem
        found = [m for m in members
                 if m.startswith(f"cgd/{stem}.") and m.endswith((".so", ".pyd"))]
        if not found:
            problems.append(f"wheel lacks the compiled module cgd.{stem} (from {pyx})")
    if not any(m.endswith(".dist-info/licenses/LICENSE") for m in members):
        problems.append("wheel lacks its LICENSE")
    omp = [m for m in members if fnmatch.fnmatch(m, "cgd.libs/libgomp*.so*")]
    if bundled_openmp and not omp:
        problems.append("wheel bundles no OpenMP runtime (cgd.libs/libgomp*.so*)")
    size = Path(path).stat().st_size
    print(f"wheel {name}: {size / 1e6:.2f} MB ({size} bytes), {len(members)} files; "
          f"tags {'-'.join(tags)}; bundled OpenMP runtime: {', '.join(omp) or 'none'}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["sdist", "wheel"])
    parser.add_argument("path", type=Path)
    parser.add_argument("--repo", type=Path, required=True, help="the clone the dist was built from")
    parser.add_argument("--bundled-openmp", action="store_true",
                        help="wheel: require an OpenMP runtime bundled in cgd.libs/")
    args = parser.parse_args(argv)
    if args.kind == "sdist":
        problems = check_sdist(args.path, args.repo)
    else:
        problems = check_wheel(args.path, args.repo, args.bundled_openmp)
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
