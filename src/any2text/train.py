"""`python -m any2text.train`, `deepspeed --module any2text.train`, `torchrun -m any2text.train`,
`accelerate launch -m any2text.train`: all run `any2text.training.train.main` (see its docstring)."""

import sys

from any2text.training.train import main

if __name__ == "__main__":
    sys.exit(main())
