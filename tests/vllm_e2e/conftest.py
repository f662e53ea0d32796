"""The vLLM end-to-end tests run only where vLLM is installed: `make test-vllm` builds that venv (build/vllm-venv).

Plain `make test` (no vLLM) does not collect them. (The folder is not named `vllm`: with `tests/` on `sys.path`
it would be found as a namespace package of that name.)
"""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("vllm") else ["test_*.py"]
