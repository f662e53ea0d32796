"""`make demo`: the whole recipe (build, stage 1, stage 2, evaluation, DPO, reward model) on tiny models, offline,
in minutes.

- `run`: the pipeline (`run_demo`, and `main` behind `any2text demo` / `python -m any2text.demo`);
- `synthetic`: the image / audio / text questions it trains and scores on (`any2text demo-data`);
- `dpo`: its DPO stage (`run_dpo_stage`);
- `reward`: its reward-model stage (`run_reward_stage`), on the DPO stage's pairs;
- `synthetic_preference`: the preference pairs of that stage;
- `parts`: the tiny random "pretrained" parts the builder assembles;
- `report`: held-out scoring with and without the media, tables and loss curves.

Nothing under `any2text.data` or `any2text.training` depends on this package.
"""

from .run import main, run_demo

__all__ = ["main", "run_demo"]
