"""Shared test setup: optional oracles (torch, Chromium) skip on a reader's machine and fail under CI."""
import importlib, os, shutil, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # lets tests `import parity`

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The property suite's hypothesis profiles ("ci" by default, "thorough" with --hypothesis-profile=thorough) must be
# registered before pytest reads that option, so here and not in the test modules.
try: import hypothesis_profiles  # noqa: F401
except ImportError: pass   # without hypothesis the property tests cannot run at all


def _missing(what, how):
    msg = f"{what} is not available; {how}"
    if IN_CI: pytest.fail(f"CI=true requires it: {msg}", pytrace=False)
    pytest.skip(msg)


def require_torch():
    "Import torch 2.13 (the test oracle), skipping locally and failing under CI when it is missing."
    try: torch = importlib.import_module("torch")
    except ImportError: _missing("torch", "install it with `pip install torch==2.13.0` (or run `make test`)")
    torch.set_num_threads(1)
    return torch


def require_chromium():
    "Path of a headless-capable Chromium, skipping locally and failing under CI when there is none."
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name): return path
    _missing("Chromium", "install it with `apt-get install chromium` (as root)")


@pytest.fixture(scope="session")
def torch(): return require_torch()


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
def browser():
    "Headless Chromium driven by playwright (tests of the rendered book)."
    chromium = require_chromium()
    try: from playwright.sync_api import sync_playwright
    except ImportError: _missing("playwright", "install it with `pip install playwright` (or run `make test`)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield b
        b.close()
