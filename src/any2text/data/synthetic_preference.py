"""Transitional re-export: the demo's preference-pair generator lives in `any2text.demo.synthetic_preference`.

`any2text.demo_dpo` still imports it from here. Delete this file when `demo_dpo.py` moves into `demo/` and imports
`.synthetic_preference` instead; nothing else may use it (`data/` holds only what training uses).
"""

from ..demo.synthetic_preference import generate_preference_data

__all__ = ["generate_preference_data"]
