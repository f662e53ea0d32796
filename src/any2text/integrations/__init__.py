"""Plug-ins that let other tools run any2text checkpoints; each imports its tool only when the tool loads it.

- `any2text.integrations.lmms_eval`: the `any2text` model of lmms-eval (`pip install "any2text[lmms-eval]"`).
"""
