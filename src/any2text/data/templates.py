"""Dataset templates: turn one raw dataset row into chat messages.

A template is a function `(row: dict) -> list[dict]` returning messages in the project-wide format::

    [{"role": "system" | "user" | "assistant",
      "content": [{"type": "text", "text": str}, {"type": "image", "image": ref}, {"type": "audio", "audio": ref}]}]

- `content` is always a list, also for text-only turns.
- Media items sit where `<image>` / `<audio>` occurred in the text, in order. The placeholder itself is removed and
  the whitespace touching it is stripped; text segments that end up empty are dropped. Text away from
  placeholders is kept verbatim.
- Media references (`ref`) are left exactly as the row holds them (a path, a `{"bytes", "path"}` dict, an
  array...): loading is lazy and happens later through `any2text.data.media`.

Templates are registered by name and looked up case- and punctuation-insensitively (`"A-OKVQA" == "aokvqa"`).
Add one with::

    @register_template("MyDataset", required_columns=("question", "answer", "image"))
    def my_dataset(row):
        return [user_message(row["question"], images=[row["image"]]), assistant_message(row["answer"])]
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
TemplateFn = Callable[[dict[str, Any]], list[Message]]

IMAGE_PLACEHOLDER = "<image>"
AUDIO_PLACEHOLDER = "<audio>"
_PLACEHOLDER_RE = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(AUDIO_PLACEHOLDER)})")
_MODALITY = {IMAGE_PLACEHOLDER: "image", AUDIO_PLACEHOLDER: "audio"}

# Fixed prompts. One prompt per task (rather than the seed's random pick from a list) keeps samples reproducible and
# lets evaluation use exactly the training prompt.
# LLaVA-1.5's suffix for short-answer VQA data: without it the model learns to answer everything in one word.
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE_TEXT_PROMPT = "Answer with the text of the correct option."
MULTIPLE_CHOICE_LETTER_PROMPT = "Answer with the option's letter from the given choices directly."
AUDIO_CAPTION_PROMPT = "Give an overview of what's in the audio."
ASR_PROMPT = "Transcribe the speech in the audio."

_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}


def normalize_template_name(name: str) -> str:
    """Registry key of a template name: lower case without `-`, `_`, `.` or spaces (`"A-OKVQA"` -> `"aokvqa"`)."""
    return re.sub(r"[-_.\s]", "", name).lower()


@dataclass(frozen=True)
class Template:
    """A registered template: call it like the function it wraps.

    Args:
        name: display name (the first name it was registered under).
        fn: `(row) -> messages`.
        required_columns: columns the template reads. An entry may be a tuple of alternatives, any one of which is
            enough (e.g. `("image", "images")`). `load_spec` checks them before training starts.
    """

    name: str
    fn: TemplateFn
    required_columns: tuple[str | tuple[str, ...], ...] = field(default=())

    def __call__(self, row: dict[str, Any]) -> list[Message]:
        return self.fn(row)

    def missing_columns(self, column_names: Sequence[str]) -> list[str]:
        """The required columns (or groups of alternatives, joined by `|`) absent from `column_names`."""
        present = set(column_names)
        missing = []
        for required in self.required_columns:
            alternatives = (required,) if isinstance(required, str) else required
            if not present.intersection(alternatives):
                missing.append("|".join(alternatives))
        return missing


_TEMPLATES: dict[str, Template] = {}


def register_template(
    name: str,
    fn: TemplateFn | None = None,
    *,
    required_columns: Sequence[str | tuple[str, ...]] = (),
    aliases: Sequence[str] = (),
) -> Any:
    """Register a template under `name` (and `aliases`); usable as `@register_template(name)` or directly.

    Raises:
        ValueError: another function is already registered under one of the names.
    """

    def decorator(template_fn: TemplateFn) -> TemplateFn:
        template = Template(name=name, fn=template_fn, required_columns=tuple(required_columns))
        for key in {normalize_template_name(n) for n in (name, *aliases)}:
            existing = _TEMPLATES.get(key)
            if existing is not None and existing.fn is not template_fn:
                raise ValueError(
                    f"Template name `{name}` clashes with the registered template `{existing.name}` (both normalise "
                    f"to `{key}`). Pick another name."
                )
            _TEMPLATES[key] = template
        return template_fn

    return decorator if fn is None else decorator(fn)


def available_templates() -> list[str]:
    """Display names of all registered templates (aliases not repeated), sorted."""
    return sorted({template.name for template in _TEMPLATES.values()}, key=str.lower)


def get_template(name: str) -> Template:
    """Look a template up by name, ignoring case, `-`, `_`, `.` and spaces.

    Raises:
        ValueError: unknown name; the message lists the available templates.
    """
    template = _TEMPLATES.get(normalize_template_name(name))
    if template is None:
        names = ", ".join(f"`{n}`" for n in available_templates())
        raise ValueError(
            f"Unknown template `{name}`. Available templates: {names}. "
            "Register your own with `any2text.data.register_template`."
        )
    return template


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks


_ID_KEYS = ("id", "question_id", "index")


def row_id(row: dict[str, Any]) -> str | None:
    """A row's own identifier (`id`, `question_id` or `index`), as a string; `None` when it has none."""
    for key in _ID_KEYS:
        if row.get(key) is not None:
            return str(row[key])
    return None


def row_name(row: dict[str, Any]) -> str:
    """How errors refer to a row: by its `id` / `question_id` when it has one."""
    for key in _ID_KEYS:
        if row.get(key) is not None:
            return f"row `{key}={row[key]}`"
    return "row"


class ConversationError(ValueError):
    """Messages that break the conversation rules of `check_conversation`."""

    cause = "invalid_conversation"


def check_conversation(messages: list[Message]) -> None:
    """Refuse conversations that would train the wrong thing, whatever template made them.

    Wanted: optional system turns first, then user and assistant turns alternating, starting with the user and ending
    with the assistant, and every assistant turn holding some text. An empty answer trains the model to stop at once;
    a conversation that starts with the assistant, or has two user turns in a row, is a sign of a broken row (a lost
    turn, swapped roles), not a conversation to learn from.

    Raises:
        ConversationError: (a `ValueError`) saying which turn breaks which rule.
    """
    if not isinstance(messages, list) or not messages:
        raise ConversationError("The template produced no messages.")
    roles = [message.get("role") if isinstance(message, dict) else None for message in messages]
    start = 0
    while start < len(roles) and roles[start] == "system":
        start += 1
    turns = roles[start:]
    if not turns or "assistant" not in turns:
        raise ConversationError("The conversation has no assistant turn, so there is nothing to train on.")
    if turns[0] != "user":
        raise ConversationError(
            f"The conversation starts with {'the assistant' if turns[0] == 'assistant' else f'a `{turns[0]}` turn'} "
            "(after any system turns); it must start with a user turn. A turn was probably lost or mislabelled."
        )
    for position, (previous, role) in enumerate(zip(turns, turns[1:]), start=start + 1):
        if role not in ("user", "assistant"):
            raise ConversationError(
                f"Turn {position} has role `{role}`; after the first turn only user/assistant alternate."
            )
        if role == previous:
            raise ConversationError(
                f"Turns {position - 1} and {position} are both `{role}` turns; user and assistant turns must "
                "alternate (merge the two turns, or fix the roles)."
            )
    if turns[-1] != "assistant":
        raise ConversationError(
            "The conversation ends with a user turn that has no answer; drop that turn or answer it."
        )
    for position, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        content = message.get("content")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        if not any(item.get("type") == "text" and str(item.get("text") or "").strip() for item in items):
            raise ConversationError(
                f"Assistant turn {position} is empty; an empty answer teaches the model to say nothing."
            )


def split_placeholders(text: str, media: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Turn text with `<image>` / `<audio>` placeholders into content items, consuming refs from `media` in order.

    `media` maps `"image"` / `"audio"` to lists of refs; consumed refs are popped from the front. The caller checks
    counts beforehand, so running out of refs here is a bug, not bad data.
    """
    parts = _PLACEHOLDER_RE.split(text)
    content: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        if part in _MODALITY:
            modality = _MODALITY[part]
            content.append({"type": modality, modality: media[modality].pop(0)})
            continue
        # Odd indices are placeholders: strip only the side of a text segment that touches one.
        if i > 0:
            part = part.lstrip()
        if i < len(parts) - 1:
            part = part.rstrip()
        if part:
            content.append({"type": "text", "text": part})
    return content


def user_message(text: str, images: Sequence[Any] = (), audios: Sequence[Any] = ()) -> Message:
    """A user turn with the media first, then the text (the LLaVA convention)."""
    content: list[dict[str, Any]] = [{"type": "image", "image": ref} for ref in images]
    content += [{"type": "audio", "audio": ref} for ref in audios]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def assistant_message(text: str) -> Message:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _field(row: dict[str, Any], key: str) -> Any:
    """`row[key]`, with an error naming the row when the value is missing."""
    value = row.get(key)
    if value is None:
        raise ValueError(f"{row_name(row)} has no value in column `{key}`.")
    return value


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _media_of(row: dict[str, Any], single: str, plural: str) -> list[Any]:
    one, many = _as_list(row.get(single)), _as_list(row.get(plural))
    if one and many:
        raise ValueError(
            f"{row_name(row)} has both `{single}` and `{plural}`; keep one column (LLaVA rows use `{single}` for one "
            f"file and `{plural}` for several)."
        )
    return one or many


# ---------------------------------------------------------------------------------------------------------------------
# Conversation datasets


@register_template("LLaVA", required_columns=("conversations",), aliases=("LLaVA-Pretrain", "ShareGPT", "ShareGPT-4o"))
def llava(row: dict[str, Any]) -> list[Message]:
    """LLaVA-Instruct-150K / LLaVA-Pretrain-558K / ShareGPT-4o rows.

    `conversations` is `[{"from": "human" | "gpt" | "system", "value": str}]` (`{"role", "content"}` turns work
    too). Media come from `image` (one) or `images` (a list), and `audio` / `audios`; rows without them are
    text-only. `<image>` / `<audio>` may appear anywhere, several times. A row with media but no placeholder at all
    gets them prepended to the first user turn (the LLaVA convention); any other count mismatch is an error.
    """
    turns = _field(row, "conversations")
    if not isinstance(turns, list | tuple):
        raise ValueError(
            f"{row_name(row)} has `conversations` of type {type(turns).__name__}; expected a list of turns "
            '(`[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]`).'
        )
    media = {"image": _media_of(row, "image", "images"), "audio": _media_of(row, "audio", "audios")}
    roles_and_texts = []
    for position, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(
                f"{row_name(row)} has turn {position} of type {type(turn).__name__}; expected an object "
                '`{"from": ..., "value": ...}`.'
            )
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        role = _ROLES.get(str(speaker).lower())
        if role is None:
            raise ValueError(
                f"{row_name(row)} has a turn from `{speaker}`; expected one of {', '.join(f'`{r}`' for r in _ROLES)}."
            )
        if not isinstance(text, str):
            raise ValueError(f"{row_name(row)} has a `{speaker}` turn whose text is {type(text).__name__}, not str.")
        roles_and_texts.append((role, text))
    if not any(role == "assistant" for role, _ in roles_and_texts):
        raise ValueError(f"{row_name(row)} has no assistant (`gpt`) turn, so there is nothing to train on.")

    for placeholder, modality in _MODALITY.items():
        count = sum(text.count(placeholder) for _, text in roles_and_texts)
        if count == 0 and media[modality]:
            first_user = next((i for i, (role, _) in enumerate(roles_and_texts) if role == "user"), None)
            if first_user is None:
                raise ValueError(f"{row_name(row)} has {modality} media but no user turn to attach them to.")
            role, text = roles_and_texts[first_user]
            roles_and_texts[first_user] = (role, f"{placeholder}\n" * len(media[modality]) + text)
        elif count != len(media[modality]):
            raise ValueError(
                f"{row_name(row)} has {count} `{placeholder}` placeholder(s) but {len(media[modality])} {modality} "
                f"file(s) in `{modality}`/`{modality}s`. Make the counts match (one placeholder per file)."
            )
    return [{"role": role, "content": split_placeholders(text, media)} for role, text in roles_and_texts]


# ---------------------------------------------------------------------------------------------------------------------
# Image question answering


def _aokvqa_choices(row: dict[str, Any]) -> tuple[str, list[str], int]:
    choices = list(_field(row, "choices"))
    index = row.get("correct_choice_idx")
    if index is None:
        raise ValueError(
            f"{row_name(row)} has no `correct_choice_idx` (the A-OKVQA test split ships without answers); "
            "train on the `train` or `validation` split."
        )
    if not 0 <= int(index) < len(choices):
        raise ValueError(f"{row_name(row)} has `correct_choice_idx={index}` but {len(choices)} choices.")
    options = "\n".join(f"{chr(ord('A') + i)}. {choice}" for i, choice in enumerate(choices))
    return f"{_field(row, 'question')}\n{options}", choices, int(index)


@register_template("A-OKVQA", required_columns=("image", "question", "choices", "correct_choice_idx"))
def aokvqa(row: dict[str, Any]) -> list[Message]:
    """A-OKVQA as multiple choice answered with the *text* of the correct choice.

    User: image, then `"{question}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\n" + MULTIPLE_CHOICE_TEXT_PROMPT`;
    assistant: `choices[correct_choice_idx]`. The seed also answered with the choice text (followed by the
    rationales); the lettered list lets the model see the alternatives. `A-OKVQA-MC` answers with the letter instead.
    """
    prompt, choices, index = _aokvqa_choices(row)
    return [
        user_message(f"{prompt}\n{MULTIPLE_CHOICE_TEXT_PROMPT}", images=[_field(row, "image")]),
        assistant_message(str(choices[index])),
    ]


@register_template("A-OKVQA-MC", required_columns=("image", "question", "choices", "correct_choice_idx"))
def aokvqa_letter(row: dict[str, Any]) -> list[Message]:
    """A-OKVQA multiple choice answered with the letter (LLaVA-1.5's format; matches MMBench-style evaluation)."""
    prompt, _, index = _aokvqa_choices(row)
    return [
        user_message(f"{prompt}\n{MULTIPLE_CHOICE_LETTER_PROMPT}", images=[_field(row, "image")]),
        assistant_message(chr(ord("A") + index)),
    ]


@register_template("VQAv2", required_columns=("image", "question", "multiple_choice_answer"))
def vqav2(row: dict[str, Any]) -> list[Message]:
    """VQAv2: `question` + SHORT_ANSWER_PROMPT -> `multiple_choice_answer` (the annotators' consensus answer)."""
    return [
        user_message(f"{_field(row, 'question')}\n{SHORT_ANSWER_PROMPT}", images=[_field(row, "image")]),
        assistant_message(str(_field(row, "multiple_choice_answer"))),
    ]


@register_template("OK-VQA", required_columns=("image", "question", "answers"))
def okvqa(row: dict[str, Any]) -> list[Message]:
    """OK-VQA: `question` + SHORT_ANSWER_PROMPT -> the most common of the 10 `answers`.

    Ties go to the answer that occurs first (the seed's `max(set(...))` broke ties by hash order, so differently
    per run).
    """
    answers = [a["answer"] if isinstance(a, dict) else a for a in _as_list(_field(row, "answers"))]
    if not answers:
        raise ValueError(f"{row_name(row)} has an empty `answers` list.")
    answer = Counter(answers).most_common(1)[0][0]
    return [
        user_message(f"{_field(row, 'question')}\n{SHORT_ANSWER_PROMPT}", images=[_field(row, "image")]),
        assistant_message(str(answer)),
    ]


@register_template("OCR-VQA", required_columns=("image", "questions", "answers"))
def ocrvqa(row: dict[str, Any]) -> list[Message]:
    """OCR-VQA: one image with many aligned `questions` / `answers` -> one multi-turn conversation.

    The image comes with the first question; every question carries SHORT_ANSWER_PROMPT (answers are titles,
    authors, genres, yes/no).
    """
    questions, answers = _as_list(_field(row, "questions")), _as_list(_field(row, "answers"))
    if not questions or len(questions) != len(answers):
        raise ValueError(
            f"{row_name(row)} has {len(questions)} `questions` and {len(answers)} `answers`; expected the same "
            "non-zero number."
        )
    messages = []
    for i, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        images = [_field(row, "image")] if i == 0 else []
        messages.append(user_message(f"{question}\n{SHORT_ANSWER_PROMPT}", images=images))
        messages.append(assistant_message(str(answer)))
    return messages


# ---------------------------------------------------------------------------------------------------------------------
# Audio


@register_template("AudioCaps", required_columns=(("audio", "audiocap_path"), "caption"))
def audiocaps(row: dict[str, Any]) -> list[Message]:
    """AudioCaps: AUDIO_CAPTION_PROMPT -> `caption`. Audio from `audio`, or `audiocap_path` (the seed's layout)."""
    audio = row.get("audio") if row.get("audio") is not None else _field(row, "audiocap_path")
    return [
        user_message(AUDIO_CAPTION_PROMPT, audios=[audio]),
        assistant_message(str(_field(row, "caption")).strip()),
    ]


@register_template("Clotho", required_columns=("audio", "text"))
def clotho(row: dict[str, Any]) -> list[Message]:
    """CLAPv2/Clotho: AUDIO_CAPTION_PROMPT -> the FIRST of the 5 captions that `text` holds joined by `". "`.

    One caption per clip keeps the epoch size equal to the number of clips; the trailing period is dropped so the
    targets look like AudioCaps captions.
    """
    caption = str(_field(row, "text")).split(". ")[0].strip().rstrip(".")
    if not caption:
        raise ValueError(f"{row_name(row)} has an empty caption in `text`.")
    return [user_message(AUDIO_CAPTION_PROMPT, audios=[_field(row, "audio")]), assistant_message(caption)]


@register_template("LibriSpeech", required_columns=("audio", "text"))
def librispeech(row: dict[str, Any]) -> list[Message]:
    """LibriSpeech ASR: ASR_PROMPT -> `text` LOWER-CASED.

    The corpus is all upper case; lower case matches the seed and keeps the targets close to the text the language
    model was pretrained on (WER scoring normalises case anyway).
    """
    return [
        user_message(ASR_PROMPT, audios=[_field(row, "audio")]),
        assistant_message(str(_field(row, "text")).strip().lower()),
    ]


_QA_TEXT_RE = re.compile(r"^\s*Question:\s*(?P<question>.*?)\s*Answer:\s*(?P<answer>.*?)\s*$", re.DOTALL)


@register_template("Clotho-AQA", required_columns=("audio", ("question", "text")))
def clotho_aqa(row: dict[str, Any]) -> list[Message]:
    """Clotho-AQA: `question` + SHORT_ANSWER_PROMPT -> `answer`.

    Also reads CLAPv2/ClothoAQA rows, whose `text` is `"Question: ... Answer: ..."`.
    """
    if row.get("question") is not None:
        question, answer = row["question"], _field(row, "answer")
    else:
        match = _QA_TEXT_RE.match(str(_field(row, "text")))
        if match is None or not match["question"] or not match["answer"]:
            raise ValueError(f"{row_name(row)} has `text` not of the form `Question: ... Answer: ...`.")
        question, answer = match["question"], match["answer"]
    return [
        user_message(f"{question}\n{SHORT_ANSWER_PROMPT}", audios=[_field(row, "audio")]),
        assistant_message(str(answer)),
    ]
