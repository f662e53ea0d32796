"""`python -m any2text.demo`: the same as `any2text demo` and `make demo`."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
