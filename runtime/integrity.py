"""File digests for artifact integrity: sha256 of a file, and a cache of verified digests keyed by size + mtime.

Every file a manifest names is verified against its recorded sha256 before use; the cache (one JSON file in the
user's cache directory) makes a second start of the same, unchanged artifact cheap.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def file_sha256(path: os.PathLike | str) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """avs-edge's per-user cache: ``$AVS_EDGE_CACHE`` or ``~/.cache/avs-edge``."""
    return Path(os.environ.get("AVS_EDGE_CACHE") or Path.home() / ".cache" / "avs-edge")


_CACHE_NAME = "verified-digests.json"


def _stat_key(path: Path) -> list[int]:
    """What must be unchanged for a cached digest to stand: size, mtime, ctime (not settable by users), inode."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read_cache(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(file: Path, data: dict) -> None:
    """Best effort: an unwritable cache only costs a re-hash next time."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=file.parent, prefix=".digests-", delete=False,
                                         encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(fh.name, file)
    except OSError:
        pass


def digests(paths: list[Path]) -> dict[Path, str]:
    """sha256 of each file, reusing a cached digest while the file's size, times and inode are unchanged."""
    cache_file = cache_dir() / _CACHE_NAME
    cache = _read_cache(cache_file)
    out, changed = {}, False
    for path in paths:
        real = str(Path(path).resolve())
        key = _stat_key(Path(real))
        entry = cache.get(real)
        if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("sha256"), str):
            out[path] = entry["sha256"]
            continue
        out[path] = file_sha256(real)
        if _stat_key(Path(real)) == key:        # unchanged while hashing: safe to remember
            cache[real] = {"stat": key, "sha256": out[path]}
            changed = True
    if changed:
        _write_cache(cache_file, cache)
    return out
