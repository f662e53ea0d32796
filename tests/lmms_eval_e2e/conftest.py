"""The lmms-eval end-to-end tests run only where lmms-eval is installed: `make test-lmms-eval` builds that venv
(build/lmms-venv). Plain `make test` (no lmms-eval) does not collect them; tests/test_lmms_eval_adapter.py checks the
plug-in's own logic there. (The folder is not named `lmms_eval`: with `tests/` on `sys.path` it would be found as a
namespace package of that name.)
"""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("lmms_eval") else ["test_*.py"]
