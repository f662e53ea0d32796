"""`python -m any2text.evaluate ...` is `any2text eval ...` (see any2text.evaluation.evaluate)."""

from any2text.evaluation.evaluate import main

if __name__ == "__main__":
    main()
