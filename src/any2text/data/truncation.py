"""Media-safe truncation for training batches: what happens to a sample longer than `max_length`.

Training-only, so it lives here rather than in the shipped processor (remote code). The processor's own
`truncation=` stays transformers' tokenizer argument.
"""

from collections.abc import Sequence

# What to do with a sample longer than `max_length` (the training CLI's `--truncation`). Media spans are never cut.
TRUNCATION_MODES = ("error", "drop", "text")


def fit_to_max_length(
    media_mask: Sequence[bool], max_length: int, truncation: str, name: str = "The sample"
) -> int | None:
    """How many leading tokens of a sample to keep so that it fits `max_length` without cutting a media span.

    The one home of media-safe truncation, for whoever owns a batch (the training collator). Its vocabulary:
    `"error"` raises (naming `name` and the fix), `"drop"` returns `None` (the caller leaves the sample out and counts
    it), `"text"` cuts text off the end when every media span lies before the cut, and otherwise returns `None`.
    The processor's own `truncation=` stays transformers' tokenizer argument: it cuts the expanded text, and a cut
    through a media span is transformers' token-count error.
    """
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"`truncation` must be one of {TRUNCATION_MODES}, got `{truncation}`.")
    length = len(media_mask)
    if length <= max_length:
        return length
    if truncation == "error":
        raise ValueError(
            f"{name} has {length} tokens (media included), more than `max_length={max_length}`. Raise `max_length`, "
            "or set `truncation` to `'drop'` (skip such samples, counted and logged) or `'text'` (cut text at the "
            "end; media spans stay whole)."
        )
    if truncation == "text" and not any(media_mask[max_length:]):
        return max_length
    return None
