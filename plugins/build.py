"""Build the native libraries.

``python -m plugins.build [--tensorrt-root DIR] [--ort-include DIR] [--jobs N] [--verbose]``

Configures ``plugins/`` with CMake into ``build/native/`` (Release), builds it, copies every built library to
``plugins/lib/``, writes ``plugins/lib/build_status.json`` and prints one line per part: built, or skipped and why.
A second run is incremental (CMake decides what to recompile) and leaves unchanged libraries in place.

ONNX Runtime's C/C++ headers come from ``--ort-include``, else ``$ORT_INCLUDE_DIR``, else an earlier download in
``build/deps/``, else Debian trixie's ``libonnxruntime-dev`` package: apt-get fetches it with a private source list,
package lists and cache under ``build/deps/apt/`` (the system's apt configuration and state are never touched) and
dpkg-deb unpacks it into ``build/deps/onnxruntime/``.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from plugins import LIB_DIR, PARTS, STATUS_FILE

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIR = REPO / "plugins"
BUILD_DIR = REPO / "build" / "native"
DEPS_DIR = REPO / "build" / "deps"
PARTS_FILE = BUILD_DIR / "avs_parts.json"
CONFIGURE_ARGS_FILE = BUILD_DIR / "avs_configure_args.json"
GPU_CMAKE = SOURCE_DIR / "selective_scan" / "gpu.cmake"

ORT_PACKAGE = "libonnxruntime-dev"
ORT_SUITE = "trixie"
ORT_HEADER = "onnxruntime_cxx_api.h"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
ORT_HINT = ("pass --ort-include DIR or set ORT_INCLUDE_DIR (a folder holding onnxruntime_cxx_api.h, e.g. include/ of "
            "an onnxruntime release archive)")


class BuildError(Exception):
    """A problem for the user to fix (a missing tool or header, a failed command): reported in one message."""


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(cmd: list[str], *, what: str, verbose: bool, cwd: Path | None = None) -> None:
    """Run ``cmd``; its output is shown live with --verbose, else only when it fails."""
    if verbose:
        print("+ " + " ".join(cmd), flush=True)
        result = subprocess.run(cmd, cwd=cwd)
        output = ""
    else:
        result = subprocess.run(cmd, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = result.stdout
    if result.returncode != 0:
        details = f"\n{_tail(output)}" if output else ""
        raise BuildError(f"{what} failed (exit status {result.returncode}): {' '.join(cmd)}{details}")


def _require_tool(name: str, how: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"{name} not found on PATH: {how}")
    return path


# ---- ONNX Runtime headers ----

def _ort_headers_in(folder: Path) -> Path | None:
    """``folder`` or ``folder/onnxruntime`` when it holds the C++ API header."""
    for candidate in (folder, folder / "onnxruntime"):
        if (candidate / ORT_HEADER).is_file():
            return candidate.resolve()
    return None


def _debian_mirror() -> str:
    """The machine's Debian archive URI (from deb822 .sources or one-line .list files), else deb.debian.org."""
    apt_dir = Path("/etc/apt")
    files = [*sorted((apt_dir / "sources.list.d").glob("*.sources")), apt_dir / "sources.list",
             *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        uris = [uri for line in re.findall(r"^URIs:\s*(.+)$", text, re.M) for uri in line.split()]
        uris += re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
        for uri in uris:
            if "debian" in uri and "security" not in uri:
                return uri.rstrip("/")
    return DEFAULT_DEBIAN_MIRROR


def _download_ort_headers(verbose: bool) -> Path:
    """Fetch and unpack Debian trixie's libonnxruntime-dev with a private apt configuration."""
    for tool in ("apt-get", "dpkg-deb"):
        _require_tool(tool, f"it is needed to download ONNX Runtime's headers; or {ORT_HINT}")
    mirror = _debian_mirror()
    apt_dir = DEPS_DIR / "apt"
    target = DEPS_DIR / "onnxruntime"
    for sub in ("lists/partial", "cache/archives/partial", "preferences.d"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    sources = apt_dir / "sources.list"
    signed_by = f"[signed-by={DEBIAN_KEYRING}] " if DEBIAN_KEYRING.is_file() else ""
    sources.write_text(f"deb {signed_by}{mirror} {ORT_SUITE} main\n")
    options = []
    for key, value in (("Dir::Etc::sourcelist", sources), ("Dir::Etc::sourceparts", "-"),
                       ("Dir::Etc::preferences", apt_dir / "preferences"),
                       ("Dir::Etc::preferencesparts", apt_dir / "preferences.d"),
                       ("Dir::State::Lists", apt_dir / "lists"), ("Dir::Cache", apt_dir / "cache"),
                       ("APT::Get::List-Cleanup", "0")):
        options += ["-o", f"{key}={value}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options += ["-o", "APT::Sandbox::User=root"]  # apt's _apt user cannot write into our private folders
    print(f"ONNX Runtime headers: downloading {ORT_PACKAGE} ({ORT_SUITE}) from {mirror}", flush=True)
    hint = f"; {ORT_HINT}"
    _run(["apt-get", *options, "update"], what=f"apt-get update of the private {ORT_SUITE} list{hint}",
         verbose=verbose, cwd=apt_dir)
    for old in apt_dir.glob(f"{ORT_PACKAGE}_*.deb"):
        old.unlink()
    _run(["apt-get", *options, "download", ORT_PACKAGE], what=f"apt-get download {ORT_PACKAGE}{hint}",
         verbose=verbose, cwd=apt_dir)
    debs = sorted(apt_dir.glob(f"{ORT_PACKAGE}_*.deb"))
    if not debs:
        raise BuildError(f"apt-get download {ORT_PACKAGE} left no .deb in {_relative(apt_dir)}{hint}")
    shutil.rmtree(target, ignore_errors=True)
    _run(["dpkg-deb", "-x", str(debs[-1]), str(target)], what=f"unpacking {debs[-1].name}", verbose=verbose)
    found = _ort_headers_in(target / "usr" / "include")
    if found is None:
        raise BuildError(f"{debs[-1].name} holds no {ORT_HEADER}{hint}")
    return found


def find_ort_include(flag: str | None, *, verbose: bool = False) -> Path:
    """The ONNX Runtime header folder: --ort-include, $ORT_INCLUDE_DIR, an earlier download, or a new download."""
    for origin, value in (("--ort-include", flag), ("ORT_INCLUDE_DIR", os.environ.get("ORT_INCLUDE_DIR"))):
        if value:
            found = _ort_headers_in(Path(value).expanduser())
            if found is None:
                raise BuildError(f"{origin}={value} holds no {ORT_HEADER} (nor does its onnxruntime/ subfolder)")
            return found
    return _ort_headers_in(DEPS_DIR / "onnxruntime" / "usr" / "include") or _download_ort_headers(verbose)


# ---- CMake ----

def _configure(cmake: str, ort_include: Path, tensorrt_root: str, verbose: bool) -> None:
    if not (os.environ.get("CXX") or any(shutil.which(c) for c in ("c++", "g++", "clang++"))):
        raise BuildError("no C++ compiler found (c++, g++ or clang++ on PATH, or $CXX): install one, e.g. "
                         "apt-get install g++")
    settings = {"CMAKE_BUILD_TYPE": "Release", "ORT_INCLUDE_DIR": str(ort_include), "TENSORRT_ROOT": tensorrt_root}
    cache = BUILD_DIR / "CMakeCache.txt"
    if cache.is_file() and CONFIGURE_ARGS_FILE.is_file() and json.loads(CONFIGURE_ARGS_FILE.read_text()) == settings:
        return  # configured with these settings; `cmake --build` re-runs CMake itself when a CMakeLists.txt changes
    cmd = [cmake, "-S", str(SOURCE_DIR), "-B", str(BUILD_DIR)]
    if not cache.is_file() and shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    cmd += [f"-D{key}={value}" for key, value in settings.items()]
    CONFIGURE_ARGS_FILE.unlink(missing_ok=True)  # a failed configure must not look like a finished one
    _run(cmd, what="CMake configure", verbose=verbose)
    CONFIGURE_ARGS_FILE.write_text(json.dumps(settings, indent=2) + "\n")


def _install(library: Path) -> Path:
    """Copy ``library`` into plugins/lib/ unless an identical copy is there; replace, never overwrite in place."""
    destination = LIB_DIR / library.name
    if destination.is_file() and filecmp.cmp(library, destination, shallow=False):
        return destination
    staging = destination.with_name(destination.name + ".tmp")
    shutil.copy2(library, staging)
    os.replace(staging, destination)  # a process that mapped the old file keeps it
    return destination


def _collect_parts() -> dict[str, dict]:
    """Install what CMake reports as built; every known part gets an entry."""
    if not PARTS_FILE.is_file():
        raise BuildError(f"CMake wrote no {_relative(PARTS_FILE)}: was plugins/CMakeLists.txt changed?")
    status = {}
    for entry in json.loads(PARTS_FILE.read_text()):
        name, library = entry["name"], entry.get("library")
        record = {"label": entry["label"], "status": entry["status"], "reason": entry["reason"], "library": None}
        if entry["status"] == "built" and library:
            if not Path(library).is_file():
                raise BuildError(f"{entry['label']}: reported built, but {library} does not exist")
            if name in PARTS and Path(library).name != PARTS[name].library:
                raise BuildError(f"{entry['label']}: CMake builds {Path(library).name}, plugins/__init__.py expects "
                                 f"{PARTS[name].library}")
            record["library"] = _install(Path(library)).name
        status[name] = record
    for name, part in PARTS.items():
        if name not in status:
            reason = ("not reported by the CMake project" if GPU_CMAKE.is_file()
                      else f"{_relative(GPU_CMAKE)} is not in this checkout")
            status[name] = {"label": part.label, "status": "skipped", "reason": reason, "library": None}
        if status[name]["library"] is None:
            (LIB_DIR / part.library).unlink(missing_ok=True)  # no stale library from an earlier build
    order = [*PARTS, *(name for name in status if name not in PARTS)]
    return {name: status[name] for name in order}


def build(*, ort_include: str | None = None, tensorrt_root: str | None = None, jobs: int | None = None,
          verbose: bool = False) -> dict[str, dict]:
    """Configure, build and install; returns the part status written to plugins/lib/build_status.json."""
    cmake = _require_tool("cmake", "install CMake >= 3.18 (apt-get install cmake, or pip install cmake)")
    headers = find_ort_include(ort_include, verbose=verbose)
    root = tensorrt_root if tensorrt_root is not None else os.environ.get("TENSORRT_ROOT", "")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    _configure(cmake, headers, str(Path(root).expanduser().resolve()) if root else "", verbose)
    cmd = [cmake, "--build", str(BUILD_DIR), "--parallel", str(jobs or os.cpu_count() or 1)]
    _run(cmd + (["--verbose"] if verbose else []), what="native build", verbose=verbose)
    LIB_DIR.mkdir(parents=True, exist_ok=True)
    status = _collect_parts()
    staging = STATUS_FILE.with_name(STATUS_FILE.name + ".tmp")
    staging.write_text(json.dumps({"ort_include": str(headers), "parts": status}, indent=2) + "\n")
    os.replace(staging, STATUS_FILE)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plugins.build",
        description="Build the native libraries with CMake (build/native/) and install them into plugins/lib/.")
    parser.add_argument("--tensorrt-root", metavar="DIR",
                        help="TensorRT install root, with its include/ and lib/ (default: $TENSORRT_ROOT)")
    parser.add_argument("--ort-include", metavar="DIR",
                        help="folder with ONNX Runtime's onnxruntime_cxx_api.h (default: $ORT_INCLUDE_DIR, "
                             "else downloaded into build/deps/)")
    parser.add_argument("--jobs", type=int, metavar="N", help="parallel compile jobs (default: CPU count)")
    parser.add_argument("--verbose", action="store_true", help="show CMake's and the compiler's output")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        status = build(ort_include=args.ort_include, tensorrt_root=args.tensorrt_root, jobs=args.jobs,
                       verbose=args.verbose)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for entry in status.values():
        if entry["status"] == "built":
            print(f"{entry['label']}: built ({_relative(LIB_DIR / entry['library'])})")
        else:
            print(f"{entry['label']}: {entry['status']} ({entry['reason']})")
    print(f"native build done in {time.perf_counter() - start:.1f} s ({_relative(BUILD_DIR)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
