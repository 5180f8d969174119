"""Shared test fixtures. Real data comes from ../shared/data (never copied into the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (the shared/ folder must sit beside the repository)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium for Playwright (RLHFLAB_CHROMIUM); a skip, or a failure under RLHFLAB_REQUIRE_BROWSER=1."""
    import os
    import shutil

    path = os.environ.get("RLHFLAB_CHROMIUM", "/usr/bin/chromium")
    required = os.environ.get("RLHFLAB_REQUIRE_BROWSER") == "1"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        (pytest.fail if required else pytest.skip)("playwright is not installed (pip install -e '.[dev]')")
    if not (Path(path).exists() or shutil.which(path)):
        (pytest.fail if required else pytest.skip)(f"Chromium not found at {path} (apt-get install chromium)")
    return path
