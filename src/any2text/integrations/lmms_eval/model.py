"""The `any2text` model of lmms-eval: `lmms-eval --model any2text --model_args pretrained=CKPT --tasks ...`.

`Any2Text` is the chat model (lmms-eval's default for it: tasks hand it chat messages); `Any2TextSimple` is what
`--force_simple` picks (tasks hand it a context string and `doc_to_visual`). Both load the checkpoint with
`any2text.inference.load_inference_model` and run every request through `any2text.inference` (see `adapter.py`).
This module imports lmms-eval; the entry point in `any2text.integrations.lmms_eval` names it without importing it.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ...inference import load_inference_model
from .adapter import (
    DEFAULT_MAX_NEW_TOKENS,
    continuation_logprobs,
    generate_answers,
    to_conversation,
    visuals_conversation,
)


def _batch_size(value: int | str) -> int:
    if str(value).isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"`--batch_size {value}`: the any2text model takes a whole number >= 1 (no `auto`).")


class Any2Text(lmms):
    """Any checkpoint `AutoModelForImageTextToText` loads once `any2text` is imported (any2text's own, stock Llava).

    Args (lmms-eval's `--model_args`, plus its `--batch_size` / `--device`):
        pretrained: checkpoint folder or Hub id.
        dtype: `auto` (the checkpoint's), `float32`, `bfloat16` or `float16`.
        device: `cpu`, `cuda`, `cuda:1`...; default: CUDA when available.
        batch_size: requests per left-padded batch.
        max_new_tokens: the budget of tasks whose `generation_kwargs` set none.
        system_prompt: a system turn put before every conversation (text, or a file holding it).

    One process evaluates every request (no `accelerate launch` data parallelism).
    """

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__()
        self.model, self.processor = load_inference_model(str(pretrained), dtype=dtype, device=device)
        self.batch_size = _batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None

    def _doc(self, task: str, split: str, doc_id: int) -> dict[str, Any]:
        return self.task_dict[task][split][doc_id]

    def _with_system(self, conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.system_prompt:
            return conversation
        return self._apply_system_prompt(conversation, self.system_prompt)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        conversations, gen_kwargs = [], []
        for request in tqdm(requests, desc="Building prompts", disable=self.rank != 0):
            conversation, kwargs = self._generation_request(request.args)
            conversations.append(self._with_system(conversation))
            gen_kwargs.append(kwargs)
        return generate_answers(
            self.model, self.processor, conversations, gen_kwargs, self.batch_size, self.max_new_tokens
        )

    def _generation_request(self, args: tuple) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # Chat tasks: (context, doc_to_messages, generation_kwargs, doc_id, task, split).
        _, doc_to_messages, gen_kwargs, doc_id, task, split = args
        return to_conversation(doc_to_messages(self._doc(task, split, doc_id))), gen_kwargs

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """`(log P(continuation | context, visuals), is_greedy)` per request.

        lmms-eval builds these requests only for "simple" tasks (`--force_simple`):
        `(context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)`. The value is the documented
        log-probability (summed over the continuation's tokens), not the mean loss some of lmms-eval's own models
        return and its `multiple_choice` scoring takes the argmin of. In lmms-eval 0.7.3 that scoring fails for
        every model anyway: its evaluator turns each `(logprob, is_greedy)` response into a string first.
        """
        conversations, continuations = [], []
        for context, target, doc_to_visual, doc_id, task, split in (request.args for request in requests):
            doc = self._doc(task, split, doc_id)
            conversations.append(self._with_system(visuals_conversation(context, doc_to_visual(doc))))
            continuations.append(target if isinstance(target, str) else target(doc))
        return continuation_logprobs(self.model, self.processor, conversations, continuations, self.batch_size)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("The any2text lmms-eval model does not run multi-round tasks yet.")


class Any2TextSimple(Any2Text):
    """The same model for lmms-eval's "simple" task protocol (`--force_simple`): a context and `doc_to_visual`."""

    is_simple = True

    def _generation_request(self, args: tuple) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # Simple tasks: (context, generation_kwargs, doc_to_visual, doc_id, task, split).
        context, gen_kwargs, doc_to_visual, doc_id, task, split = args
        return visuals_conversation(context, doc_to_visual(self._doc(task, split, doc_id))), gen_kwargs


__all__ = ["Any2Text", "Any2TextSimple"]
