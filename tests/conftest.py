"""Shared fixtures: the reference material beside the checkout, seeded randomness."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (CI has it too), or ``$AVS_SHARED_DIR``."""
    path = Path(os.environ.get("AVS_SHARED_DIR", REPO.parent / "shared"))
    if not (path / "reference" / "state_dicts").is_dir():
        pytest.fail(f"reference material not found at {path}: set AVS_SHARED_DIR to the shared/ folder")
    return path
