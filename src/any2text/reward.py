"""`python -m any2text.reward`, `deepspeed --module any2text.reward`, `torchrun -m any2text.reward`: all run
`any2text.training.reward.main` (see its docstring)."""

import sys

from any2text.training.reward import main

if __name__ == "__main__":
    sys.exit(main())
