"""`python -m any2text.grpo`, `deepspeed --module any2text.grpo`, `torchrun -m any2text.grpo`: all run
`any2text.training.grpo.main` (see its docstring)."""

import sys

from any2text.training.grpo import main

if __name__ == "__main__":
    sys.exit(main())
