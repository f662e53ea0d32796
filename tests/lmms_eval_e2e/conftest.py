"""The lmms-eval end-to-end tests run only where lmms-eval is installed: `make test-lmms-eval` builds that venv
(build/lmms-venv). Plain `make test` (no lmms-eval) does not collect them; tests/test_lmms_eval_adapter.py checks the
plug-in's own logic there. (The folder is not named `lmms_eval`: with `tests/` on `sys.path` it would shadow
lmms-eval itself. Its `__init__.py` keeps this conftest from shadowing tests/conftest.py, which sorts after it.)
"""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("lmms_eval") else ["test_*.py"]
