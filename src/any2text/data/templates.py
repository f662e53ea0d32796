"""Dataset templates: turn one raw dataset row into chat messages.

A template is a function `(row: dict) -> list[dict]` returning messages in the project-wide format::

    [{"role": "system" | "user" | "assistant",
      "content": [{"type": "text", "text": str}, {"type": "image", "image": ref}, {"type": "audio", "audio": ref},
                  {"type": "video", "video": ref}]}]

- `content` is always a list, also for text-only turns.
- Media items sit where their placeholder (`<image>`, `<audio>`, `<video>`: the modality table's, see
  `any2text.modalities`) occurred in the text, in order. The placeholder itself is removed and
  the whitespace touching it is stripped; text segments that end up empty are dropped. Text away from
  placeholders is kept verbatim.
- Media references (`ref`) are left exactly as the row holds them (a path, a `{"bytes", "path"}` dict, an
  array...): loading is lazy and happens later through `any2text.data.media`.

Templates are registered by name and looked up case- and punctuation-insensitively (`"A-OKVQA" == "aokvqa"`).
A one-turn template is a prompt and a target; evaluation benchmarks ask the prompt of the template they name, so a
model is scored on the instruction it was trained with::

    register_prompt_template(
        "MyDataset", modality="image", media=lambda row: row["image"], suffix="\nAnswer briefly.",
        prompt=ask("question"), target=lambda row: row["answer"], required_columns=("question", "answer", "image"),
    )
    get_template("MyDataset").prompt(row)   # "What is it?\nAnswer briefly."

A template that makes a whole conversation (LLaVA's) is a function::

    @register_template("MyChats", required_columns=("conversations",))
    def my_chats(row):
        return [user_message(row["turns"][0]), assistant_message(row["turns"][1])]
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..modalities import MODALITIES

Message = dict[str, Any]
Row = dict[str, Any]
TemplateFn = Callable[[Row], list[Message]]
# (row, instruction suffix) -> the user text of a one-turn template.
PromptFn = Callable[[Row, str], str]


def placeholders() -> dict[str, str]:
    """Placeholder -> modality name, from the modality table (read per call: a registered modality counts at once)."""
    return {modality.placeholder: name for name, modality in MODALITIES.items()}


# Fixed prompts. One prompt per task (rather than the seed's random pick from a list) keeps samples reproducible and
# lets evaluation use exactly the training prompt.
# LLaVA-1.5's suffix for short-answer VQA data: without it the model learns to answer everything in one word.
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE_TEXT_PROMPT = "Answer with the text of the correct option."
MULTIPLE_CHOICE_LETTER_PROMPT = "Answer with the option's letter from the given choices directly."
AUDIO_CAPTION_PROMPT = "Give an overview of what's in the audio."
ASR_PROMPT = "Transcribe the speech in the audio."
# MME questions end with this; lmms-eval swaps it for the short-answer instruction.
MME_YES_NO = " Please answer yes or no."
LETTERS = "ABCDEFGHIJ"

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
        prompt_fn / target_fn / suffix: a one-turn template's prompt, answer and default instruction (see
            `register_prompt_template`); `None` for templates that make whole conversations.
    """

    name: str
    fn: TemplateFn
    required_columns: tuple[str | tuple[str, ...], ...] = field(default=())
    prompt_fn: PromptFn | None = None
    target_fn: Callable[[Row], str] | None = None
    suffix: str = ""

    def __call__(self, row: Row) -> list[Message]:
        return self.fn(row)

    def prompt(self, row: Row, suffix: str | None = None) -> str:
        """The user text for `row`: the question and the instruction (`suffix` replaces the template's own)."""
        return self._one_turn("prompt", self.prompt_fn)(row, self.suffix if suffix is None else suffix)

    def target(self, row: Row) -> str:
        """The answer the template trains for `row`."""
        return self._one_turn("target", self.target_fn)(row)

    def _one_turn(self, what: str, fn: Callable | None) -> Callable:
        if fn is None:
            raise TypeError(
                f"Template `{self.name}` makes whole conversations, so it has no single {what}; call the template "
                "for the messages, or use a one-turn template (`register_prompt_template`)."
            )
        return fn

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
        _register(Template(name=name, fn=template_fn, required_columns=tuple(required_columns)), aliases)
        return template_fn

    return decorator if fn is None else decorator(fn)


def register_prompt_template(
    name: str,
    *,
    modality: str,
    media: Callable[[Row], Any],
    prompt: PromptFn,
    target: Callable[[Row], str],
    suffix: str = "",
    required_columns: Sequence[str | tuple[str, ...]] = (),
    aliases: Sequence[str] = (),
) -> Template:
    """Register a one-turn template: a user turn (one medium, then `prompt(row, suffix)`) and the answer `target(row)`.

    Args:
        modality: a modality of the table (`"image"`, `"audio"`, `"video"`), the kind of medium `media(row)` returns a
            reference to.
        prompt: `(row, suffix) -> str`; `suffix` is the instruction in force (`suffix` here, or the one an
            evaluation passes instead).
        suffix: the default instruction, e.g. `"\n" + SHORT_ANSWER_PROMPT`.

    Raises:
        ValueError: another template is already registered under one of the names.
    """

    def messages(row: Row) -> list[Message]:
        text = template.prompt(row)
        return [user_message(text, {modality: [media(row)]}), assistant_message(template.target(row))]

    template = Template(
        name=name,
        fn=messages,
        required_columns=tuple(required_columns),
        prompt_fn=prompt,
        target_fn=target,
        suffix=suffix,
    )
    _register(template, aliases)
    return template


def _register(template: Template, aliases: Sequence[str]) -> None:
    for key in {normalize_template_name(n) for n in (template.name, *aliases)}:
        existing = _TEMPLATES.get(key)
        if existing is not None and existing.fn is not template.fn:
            raise ValueError(
                f"Template name `{template.name}` clashes with the registered template `{existing.name}` (both "
                f"normalise to `{key}`). Pick another name."
            )
        _TEMPLATES[key] = template


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
    """Turn text with placeholders (`<image>`, `<audio>`, `<video>`...) into content items, consuming refs from `media`.

    `media` maps modality names (`"image"`) to lists of refs; consumed refs are popped from the front. The caller
    checks counts beforehand, so running out of refs here is a bug, not bad data.
    """
    names = placeholders()
    parts = re.split("(" + "|".join(re.escape(placeholder) for placeholder in names) + ")", text)
    content: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        if part in names:
            modality = MODALITIES[names[part]]
            content.append({"type": modality.content_type, modality.name: media[modality.name].pop(0)})
            continue
        # Odd indices are placeholders: strip only the side of a text segment that touches one.
        if i > 0:
            part = part.lstrip()
        if i < len(parts) - 1:
            part = part.rstrip()
        if part:
            content.append({"type": "text", "text": part})
    return content


def user_message(text: str, media: dict[str, Sequence[Any]] | None = None, **columns: Sequence[Any]) -> Message:
    """A user turn with the media first, in the table's order, then the text (the LLaVA convention).

    Media are given by modality name (`media={"image": [ref]}`) or by row column (`images=[ref]`, `audios=...`,
    `videos=...`: the table's `row_columns`).
    """
    given = {**(media or {}), **{_column_modality(column): refs for column, refs in columns.items()}}
    content: list[dict[str, Any]] = []
    for name, modality in MODALITIES.items():
        content += [{"type": modality.content_type, name: ref} for ref in given.pop(name, ())]
    if given:
        raise ValueError(f"Unknown modalities {sorted(given)}; known: {list(MODALITIES)}.")
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def _column_modality(column: str) -> str:
    for name, modality in MODALITIES.items():
        if column == name or column in modality.row_columns:
            return name
    raise TypeError(f"`user_message` got an unknown media keyword `{column}`; known: {list(MODALITIES)}.")


def assistant_message(text: str) -> Message:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _field(row: dict[str, Any], key: str) -> Any:
    """`row[key]`, with an error naming the row when the value is missing."""
    value = row.get(key)
    if value is None:
        raise ValueError(f"{row_name(row)} has no value in column `{key}`.")
    return value


def as_list(value: Any) -> list[Any]:
    """A column value as a list: `None` is empty, one value is a list of one, and a stringified Python list (as
    A-OKVQA's `choices` / `direct_answers` are in some exports) is parsed."""
    if value is None:
        return []
    if isinstance(value, str) and value.strip().startswith("["):
        value = ast.literal_eval(value)
    return list(value) if isinstance(value, list | tuple) else [value]


def is_missing(value: Any) -> bool:
    """An empty cell: `None`, NaN, blank, or the string `"nan"` (pandas-exported tables)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in ("", "nan")


def ask(column: str = "question") -> PromptFn:
    """The prompt `row[column] + suffix`, the shape of most question-answering templates."""
    return lambda row, suffix: f"{_field(row, column)}{suffix}"


def instruction_only(row: Row, suffix: str) -> str:
    """The prompt of tasks without a question (captioning, ASR): the instruction alone."""
    return suffix


def options_block(choices: Sequence[str]) -> str:
    """`"A. first\nB. second..."`; an empty choice is left out and keeps its letter (lmms-eval's MMBench prompt:
    only the options a row has are listed, so the letters stay those of the answer key)."""
    return "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices) if choice)


def most_common(values: Sequence[Any]) -> str:
    """The most frequent value; ties go to the one that occurs first."""
    return str(Counter(values).most_common(1)[0][0])


def media_of(row: dict[str, Any]) -> dict[str, list[Any]]:
    """Modality name -> the row's references, from the table's `row_columns` (`images` or `image`, ...)."""
    media = {}
    for name, modality in MODALITIES.items():
        found = {column: as_list(row.get(column)) for column in modality.row_columns}
        found = {column: refs for column, refs in found.items() if refs}
        if len(found) > 1:
            plural, single = list(found)[:2]
            raise ValueError(
                f"{row_name(row)} has both `{single}` and `{plural}`; keep one column (LLaVA rows use `{single}` for "
                f"one file and `{plural}` for several)."
            )
        media[name] = next(iter(found.values()), [])
    return media


# LLaVA-Video-178K writes `<image>` for its video: in a row with videos and no images, `<image>` means the video.
_LEGACY_VIDEO_TAG = "<image>"


def _video_tags(media: dict[str, list[Any]], texts: list[str]) -> list[str]:
    if "video" in media and media["video"] and not media.get("image") and not any("<video>" in t for t in texts):
        return [text.replace(_LEGACY_VIDEO_TAG, MODALITIES["video"].placeholder) for text in texts]
    return texts


# ---------------------------------------------------------------------------------------------------------------------
# Conversation datasets


@register_template("LLaVA", required_columns=("conversations",), aliases=("LLaVA-Pretrain", "ShareGPT", "ShareGPT-4o"))
def llava(row: dict[str, Any]) -> list[Message]:
    """LLaVA-Instruct-150K / LLaVA-Pretrain-558K / ShareGPT-4o rows.

    `conversations` is `[{"from": "human" | "gpt" | "system", "value": str}]` (`{"role", "content"}` turns work
    too). Media come from the modality table's row columns: `image` (one) or `images` (a list), `audio` / `audios`,
    `video` / `videos`; rows without them are text-only. Placeholders (`<image>`, `<audio>`, `<video>`) may appear
    anywhere, several times. A row with media but no placeholder at all gets them prepended to the first user turn
    (the LLaVA convention); any other count mismatch is an error. A row with videos and no images may write
    `<image>` for its video, as LLaVA-Video-178K does (see the `LLaVA-Video` template).
    """
    turns = _field(row, "conversations")
    if not isinstance(turns, list | tuple):
        raise ValueError(
            f"{row_name(row)} has `conversations` of type {type(turns).__name__}; expected a list of turns "
            '(`[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]`).'
        )
    media = media_of(row)
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
    texts = _video_tags(media, [text for _, text in roles_and_texts])
    roles_and_texts = [(role, text) for (role, _), text in zip(roles_and_texts, texts, strict=True)]

    for placeholder, modality in placeholders().items():
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


@register_template("LLaMA-Factory", required_columns=("messages",), aliases=("LLaMA-Factory-ShareGPT",))
def llama_factory(row: dict[str, Any]) -> list[Message]:
    """LLaMA-Factory's multimodal rows: `messages` (`[{"role", "content": str}]`) with `<image>` / `<video>` /
    `<audio>` placeholders, media in `images` / `videos` / `audios`; the LLaVA template's rules otherwise."""
    return llava({**row, "conversations": _field(row, "messages")})


# LLaVA-Video-178K (`lmms-lab/LLaVA-Video-178K`): LLaVA rows whose `video` holds the clip (its `<image>` tag is read as
# the video's placeholder), required to have one.
register_template("LLaVA-Video", llava, required_columns=("conversations", ("video", "videos")))


# ---------------------------------------------------------------------------------------------------------------------
# Image question answering

_IMAGE = {"modality": "image", "media": lambda row: _field(row, "image")}
_SHORT_ANSWER = "\n" + SHORT_ANSWER_PROMPT


def _aokvqa_question(row: Row, suffix: str) -> str:
    choices = [str(choice) for choice in as_list(_field(row, "choices"))]
    return f"{_field(row, 'question')}\n{options_block(choices)}{suffix}"


def _aokvqa_answer_index(row: Row) -> int:
    choices = as_list(_field(row, "choices"))
    index = row.get("correct_choice_idx")
    if index is None:
        raise ValueError(
            f"{row_name(row)} has no `correct_choice_idx` (the A-OKVQA test split ships without answers); "
            "train on the `train` or `validation` split."
        )
    if not 0 <= int(index) < len(choices) or is_missing(choices[int(index)]):
        raise ValueError(f"{row_name(row)} has `correct_choice_idx={index}` but choices {choices}.")
    return int(index)


_AOKVQA_COLUMNS = ("image", "question", "choices", "correct_choice_idx")

# A-OKVQA as multiple choice answered with the *text* of the correct choice. The seed also answered with the choice
# text (followed by the rationales); the lettered list lets the model see the alternatives.
register_prompt_template(
    "A-OKVQA",
    **_IMAGE,
    prompt=_aokvqa_question,
    suffix="\n" + MULTIPLE_CHOICE_TEXT_PROMPT,
    target=lambda row: str(as_list(row["choices"])[_aokvqa_answer_index(row)]),
    required_columns=_AOKVQA_COLUMNS,
)
# A-OKVQA multiple choice answered with the letter (LLaVA-1.5's format; what the `aokvqa_mc` benchmark scores).
register_prompt_template(
    "A-OKVQA-MC",
    **_IMAGE,
    prompt=_aokvqa_question,
    suffix="\n" + MULTIPLE_CHOICE_LETTER_PROMPT,
    target=lambda row: LETTERS[_aokvqa_answer_index(row)],
    required_columns=_AOKVQA_COLUMNS,
)
# A-OKVQA direct answers: the most common of the 10 `direct_answers` (what the `aokvqa_da` benchmark scores).
register_prompt_template(
    "A-OKVQA-DA",
    **_IMAGE,
    prompt=ask("question"),
    suffix=_SHORT_ANSWER,
    target=lambda row: most_common(_nonempty(row, "direct_answers")),
    required_columns=("image", "question", "direct_answers"),
)
# VQAv2: the annotators' consensus answer `multiple_choice_answer`.
register_prompt_template(
    "VQAv2",
    **_IMAGE,
    prompt=ask("question"),
    suffix=_SHORT_ANSWER,
    target=lambda row: str(_field(row, "multiple_choice_answer")),
    required_columns=("image", "question", "multiple_choice_answer"),
)


def _nonempty(row: Row, column: str) -> list[Any]:
    """The answers in `row[column]` (VQA-style `{"answer": ...}` dicts or strings); an error when there are none."""
    answers = [a["answer"] if isinstance(a, dict) else a for a in as_list(_field(row, column))]
    if not answers:
        raise ValueError(f"{row_name(row)} has an empty `{column}` list.")
    return answers


# OK-VQA: the most common of the 10 `answers`. Ties go to the answer that occurs first (the seed's
# `max(set(...))` broke ties by hash order, so differently per run).
register_prompt_template(
    "OK-VQA",
    **_IMAGE,
    prompt=ask("question"),
    suffix=_SHORT_ANSWER,
    target=lambda row: most_common(_nonempty(row, "answers")),
    required_columns=("image", "question", "answers"),
)


def _mme_question(row: Row, suffix: str) -> str:
    # lmms-eval swaps MME's own yes/no instruction for the suffix; with no suffix the question stays as written.
    question = str(_field(row, "question")).strip()
    return (question.replace(MME_YES_NO, "") if suffix else question) + suffix


register_prompt_template(
    "MME",
    **_IMAGE,
    prompt=_mme_question,
    suffix=_SHORT_ANSWER,
    target=lambda row: str(_field(row, "answer")),
    required_columns=("image", "question", "answer"),
)


def mmbench_choices(row: Row) -> list[str]:
    """MMBench's options `A`..`E` (`""` where a row has none), without the empty ones at the end."""
    choices = ["" if is_missing(row.get(letter)) else str(row[letter]) for letter in LETTERS[:5]]
    while choices and not choices[-1]:
        choices.pop()
    return choices


def _mmbench_question(row: Row, suffix: str) -> str:
    question = f"{_field(row, 'question')} Options:\n{options_block(mmbench_choices(row))}"
    hint = row.get("hint")
    return (question if is_missing(hint) else f"{hint} {question}") + suffix


register_prompt_template(
    "MMBench",
    **_IMAGE,
    prompt=_mmbench_question,
    suffix="\n" + MULTIPLE_CHOICE_LETTER_PROMPT,
    target=lambda row: str(_field(row, "answer")).strip(),
    required_columns=("image", "question", "A", "B", "answer"),
)


@register_template("OCR-VQA", required_columns=("image", "questions", "answers"))
def ocrvqa(row: Row) -> list[Message]:
    """OCR-VQA: one image with many aligned `questions` / `answers` -> one multi-turn conversation.

    The image comes with the first question; every question carries SHORT_ANSWER_PROMPT (answers are titles,
    authors, genres, yes/no).
    """
    questions, answers = as_list(_field(row, "questions")), as_list(_field(row, "answers"))
    if not questions or len(questions) != len(answers):
        raise ValueError(
            f"{row_name(row)} has {len(questions)} `questions` and {len(answers)} `answers`; expected the same "
            "non-zero number."
        )
    messages = []
    for i, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        images = [_field(row, "image")] if i == 0 else []
        messages.append(user_message(f"{question}{_SHORT_ANSWER}", images=images))
        messages.append(assistant_message(str(answer)))
    return messages


# ---------------------------------------------------------------------------------------------------------------------
# Audio

_AUDIO = {"modality": "audio", "media": lambda row: _field(row, "audio")}

# AudioCaps: audio from `audio`, or `audiocap_path` (the seed's layout).
register_prompt_template(
    "AudioCaps",
    modality="audio",
    media=lambda row: row.get("audio") if row.get("audio") is not None else _field(row, "audiocap_path"),
    prompt=instruction_only,
    suffix=AUDIO_CAPTION_PROMPT,
    target=lambda row: str(_field(row, "caption")).strip(),
    required_columns=(("audio", "audiocap_path"), "caption"),
)


def _first_clotho_caption(row: Row) -> str:
    # One caption per clip keeps the epoch size equal to the number of clips; the trailing period is dropped so the
    # targets look like AudioCaps captions.
    caption = str(_field(row, "text")).split(". ")[0].strip().rstrip(".")
    if not caption:
        raise ValueError(f"{row_name(row)} has an empty caption in `text`.")
    return caption


# CLAPv2/Clotho: the FIRST of the 5 captions that `text` holds joined by `". "`.
register_prompt_template(
    "Clotho",
    **_AUDIO,
    prompt=instruction_only,
    suffix=AUDIO_CAPTION_PROMPT,
    target=_first_clotho_caption,
    required_columns=("audio", "text"),
)
# LibriSpeech ASR: `text` LOWER-CASED. The corpus is all upper case; lower case matches the seed and keeps the
# targets close to the text the language model was pretrained on (WER scoring normalises case anyway).
register_prompt_template(
    "LibriSpeech",
    **_AUDIO,
    prompt=instruction_only,
    suffix=ASR_PROMPT,
    target=lambda row: str(_field(row, "text")).strip().lower(),
    required_columns=("audio", "text"),
)

_QA_TEXT_RE = re.compile(r"^\s*Question:\s*(?P<question>.*?)\s*Answer:\s*(?P<answer>.*?)\s*$", re.DOTALL)


def _clotho_qa(row: Row) -> tuple[str, str]:
    """(question, answer) from `question` / `answer`, or from CLAPv2/ClothoAQA's `"Question: ... Answer: ..."` text."""
    if row.get("question") is not None:
        return str(row["question"]), str(_field(row, "answer"))
    match = _QA_TEXT_RE.match(str(_field(row, "text")))
    if match is None or not match["question"] or not match["answer"]:
        raise ValueError(f"{row_name(row)} has `text` not of the form `Question: ... Answer: ...`.")
    return match["question"], match["answer"]


register_prompt_template(
    "Clotho-AQA",
    **_AUDIO,
    prompt=lambda row, suffix: _clotho_qa(row)[0] + suffix,
    suffix=_SHORT_ANSWER,
    target=lambda row: _clotho_qa(row)[1],
    required_columns=("audio", ("question", "text")),
)
