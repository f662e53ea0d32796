"""`python -m any2text.dpo`, `deepspeed --module any2text.dpo`, `torchrun -m any2text.dpo`: all run
`any2text.training.dpo.main` (see its docstring)."""

import sys

from any2text.training.dpo import main

if __name__ == "__main__":
    sys.exit(main())
