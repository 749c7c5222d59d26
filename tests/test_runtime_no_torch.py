"""runtime/ must run without torch: importing every module under it must not load torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHECK = """
import pkgutil, sys
import runtime, runtime.audio
names = [m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.")]
for name in names:
    __import__(name)
assert "runtime.audio" in names, names
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("imported:", ", ".join(names))
sys.exit("torch was imported: " + ", ".join(loaded[:5]) if loaded else 0)
"""


def test_runtime_never_imports_torch():
    result = subprocess.run([sys.executable, "-c", _CHECK], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runtime.audio" in result.stdout
