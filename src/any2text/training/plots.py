"""`training_curves.png` for every run: loss, learning rate, gradient norm, eval loss and the stage's own metrics.

`TrainingCurvesCallback` (installed by `MultimodalTrainer`, so every stage built on it has it) redraws
`output_dir/training_curves.png` from `state.log_history` at each checkpoint save and at the end of training, on the
main process, headless (a bare matplotlib `Figure`, drawn by Agg). A plotting error is logged and training goes on.

The figure is built from the log history alone, so anything holding a `trainer_state.json` can draw it too::

    import json
    from any2text.training.plots import plot_training_curves

    history = json.load(open("out/stage1/trainer_state.json"))["log_history"]
    plot_training_curves(history, "out/stage1/training_curves.png", title="stage 1")

Panels (`curve_panels`): `loss` (with `eval_loss` when present), `learning rate`, `gradient norm`, then the stage's
own numeric keys grouped: accuracies together (DPO's `rewards/accuracies`, a reward model's `accuracy`), other keys
by their prefix before `/` (DPO's `rewards/chosen`, `rewards/margins`...; `logps/...`), the rest one panel per key
(GRPO's `reward`, with `reward_std` beside it). An `eval_` key shares its training key's panel. Run summaries
(`train_runtime`, `*_per_second`, `total_flos`...) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)

CURVES_FILE = "training_curves.png"

# Log keys that describe the run rather than the training curve (the stock Trainer's summaries, and the x axis).
_NOT_CURVES = frozenset({"step", "epoch", "total_flos", "train_loss", "num_input_tokens_seen", "num_tokens"})
_NOT_CURVES_SUFFIXES = ("_runtime", "_per_second")
_FIXED_PANELS = {"loss": "loss", "learning_rate": "learning rate", "grad_norm": "gradient norm"}


@dataclass
class CurvePanel:
    """One subplot: a title and its series, each `(step, value)` points in logged order, named by their log key."""

    title: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def _panel_title(key: str) -> str:
    """The panel a (non-`eval_`) log key is drawn in."""
    if key in _FIXED_PANELS:
        return _FIXED_PANELS[key]
    if "accurac" in key.rsplit("/", 1)[-1]:
        return "accuracy"
    if "/" in key:
        return key.split("/", 1)[0]
    return key.removesuffix("_std")


def _is_curve(key: str, value: object) -> bool:
    if key in _NOT_CURVES or key.endswith(_NOT_CURVES_SUFFIXES):
        return False
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def curve_panels(log_history: Iterable[Mapping[str, object]]) -> list[CurvePanel]:
    """Group the numeric keys of a `Trainer`'s `state.log_history` into panels (see the module docstring).

    The fixed panels come first (those with data), then the stage's own in the order their keys were first logged.
    """
    panels: dict[str, CurvePanel] = {title: CurvePanel(title) for title in _FIXED_PANELS.values()}
    for entry in log_history:
        step = entry.get("step", 0)
        for key, value in entry.items():
            if not _is_curve(key, value):
                continue
            title = _panel_title(key.removeprefix("eval_"))
            panel = panels.setdefault(title, CurvePanel(title))
            panel.series.setdefault(key, []).append((float(step), float(value)))
    return [panel for panel in panels.values() if panel.series]


def plot_training_curves(
    log_history: Iterable[Mapping[str, object]], path: str | Path, title: str | None = None, columns: int = 3
) -> Path | None:
    """Draw `curve_panels(log_history)` into the image `path` (headless); `None`, and nothing written, with no data."""
    panels = curve_panels(log_history)
    if not panels:
        return None
    # A bare `Figure` draws with Agg whatever pyplot's backend is: headless, and no global state changed.
    from matplotlib.figure import Figure

    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.5 * columns, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        for key, points in panel.series.items():
            steps, values = zip(*points)
            ax.plot(steps, values, marker="." if len(points) < 50 else None, label=key)
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)  # not registered with pyplot: freed with its last reference
    return path


class TrainingCurvesCallback(TrainerCallback):
    """Redraw `output_dir/training_curves.png` at each save and at the end of training (main process only).

    Never fails training: an error while plotting is logged as a warning.
    """

    def on_save(self, args, state, control, **kwargs):
        self._write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(args, state)

    def _write(self, args, state) -> None:
        if not state.is_world_process_zero or not args.output_dir:
            return
        path = Path(args.output_dir) / CURVES_FILE
        try:
            plot_training_curves(state.log_history, path, title=Path(args.output_dir).name)
        except Exception as error:  # a plot is a report: it must never cost the run
            logger.warning(f"Could not draw the training curves to `{path}` ({type(error).__name__}: {error}).")


__all__ = ["CURVES_FILE", "CurvePanel", "TrainingCurvesCallback", "curve_panels", "plot_training_curves"]
