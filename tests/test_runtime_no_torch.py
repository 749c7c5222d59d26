"""The import direction: ``runtime`` never imports ``export`` or torch (``export`` may use ``runtime``).

A Jetson installs the runtime alone, without torch and without ``export``. Two checks over whatever is under
runtime/ when they run: a static one (every import statement, also inside functions) and a live one (importing every
runtime module in a fresh interpreter leaves torch and export out of ``sys.modules``).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("export", "torch")
RUNTIME_FILES = sorted((REPO / "runtime").rglob("*.py"))


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """``'line N: import X'`` for every import of a FORBIDDEN package anywhere in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"line {node.lineno}: import {name}" for name in names if name.split(".")[0] in FORBIDDEN]
    return found


def test_the_static_check_sees_imports_everywhere():
    source = ("import os\nimport torch.nn as nn\nfrom export.engine import x\nfrom exporter import y\n"
              "def f():\n    import export\n    from torch import nn\n    from . import export\n")
    assert forbidden_imports(source) == ["line 2: import torch.nn", "line 3: import export.engine",
                                         "line 6: import export", "line 7: import torch"]


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=[str(p.relative_to(REPO)) for p in RUNTIME_FILES])
def test_runtime_file_imports_neither_export_nor_torch(path):
    found = forbidden_imports(path.read_text(encoding="utf-8"), str(path))
    assert not found, (f"{path.relative_to(REPO)} imports {', '.join(found)}: runtime/ must run without torch and "
                       "without export/ (a Jetson installs the runtime only); move what it needs into runtime/")


_CHECK = """
import pkgutil, sys
import runtime
names = [m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.")]
for name in names:
    __import__(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "export"))
print("imported:", ", ".join(names))
sys.exit("imported " + ", ".join(loaded[:8]) if loaded else 0)
"""


def test_importing_every_runtime_module_loads_neither_torch_nor_export():
    result = subprocess.run([sys.executable, "-c", _CHECK], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    imported = result.stdout.split("imported: ", 1)[1].split(", ")
    expected = {".".join(p.relative_to(REPO).with_suffix("").parts[:-1] if p.name == "__init__.py"
                         else p.relative_to(REPO).with_suffix("").parts) for p in RUNTIME_FILES}
    assert expected - {"runtime"} <= {n.strip() for n in imported}       # every module under runtime/ was imported


_SELFTEST = """
import sys
import plugins.selftest
plugins.selftest.probe_gpu()
optional = ("torch", "export", "cv2", "onnxruntime", "tqdm", "pytest", "av", "sounddevice", "soxr", "tensorrt")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in optional)
sys.exit("imported " + ", ".join(loaded[:8]) if loaded else 0)
"""


def test_gpu_selftest_imports_only_numpy():
    """``python -m plugins.selftest`` must start on a bare CUDA machine (numpy, CMake, nvcc; none of our extras)."""
    result = subprocess.run([sys.executable, "-c", _SELFTEST], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
