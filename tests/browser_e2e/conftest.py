"""The headless-browser test of the web chat runs only where Playwright is installed: `make test-browser` builds that
venv (build/browser-venv) and installs Debian's chromium. Plain `make test` does not collect it."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("playwright") else ["test_*.py"]
