"""`any2text chat --model M --web`: a local web chat with images, audio clips and videos that streams its answers.

    pip install "any2text[web]"
    any2text chat --model ./stage2 --web      # http://127.0.0.1:7860; --host / --port to change, --share for a link

A gradio `ChatInterface` with a multimodal textbox (upload images, audio and videos, or record from the microphone),
the generation settings under the chat, and the conversation (media of earlier turns included) sent with every turn.
Answers stream token by token: `generate_batch` (the one inference path, `any2text.inference`) runs in a thread with
a `TextIteratorStreamer`; the last message is its return value, so the page ends on exactly what `any2text eval`
would generate. A file the model cannot use (not an image, audio clip or video, unreadable, or audio for an image-only
model) is answered in the chat with what is wrong, and that turn stays out of the model's context afterwards.

The page binds to 127.0.0.1, opens no share link and sends no gradio telemetry unless asked.

    >>> from any2text.evaluation.web_chat import launch_web_chat
    >>> demo = launch_web_chat(model, processor, prevent_thread_lock=True)  # doctest: +SKIP
    >>> from gradio_client import Client, handle_file  # doctest: +SKIP
    >>> Client(demo.local_url).predict({"text": "Colour?", "files": [handle_file("cat.png")]}, api_name="/chat")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
from transformers.utils import logging

from ..inference import Conversation, generate_batch
from .chat import ChatMediaError, accepted_media, describe_media, load_chat_medium, media_kind

logger = logging.get_logger(__name__)


def import_gradio() -> Any:
    """`gradio`, or an `ImportError` that says how to install the extra."""
    try:
        import gradio
    except ImportError as error:
        raise ImportError('The web chat needs gradio: `pip install "any2text[web]"`.') from error
    return gradio


class _StopWhenSet(StoppingCriteria):
    """Ends generation at the next token once `event` is set (the page's Stop button, or a closed tab)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _file_path(item: Any) -> str | None:
    """The path of a file in a gradio message: `{"path"}` (API history), `{"type": "file", "file": {"path"}}` (page
    history) or a plain path (the textbox's `files`)."""
    if isinstance(item, str | os.PathLike):
        return os.fspath(item)
    if isinstance(item, dict):
        if isinstance(item.get("file"), dict):
            return item["file"].get("path")
        return item.get("path")
    return None


def _split(content: Any) -> tuple[list[str], str]:
    """(file paths, text) of one gradio history message's content."""
    files, texts = [], []
    for item in content if isinstance(content, list) else [content]:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text":
            texts.append(item.get("text", ""))
        elif (path := _file_path(item)) is not None:
            files.append(path)
    return files, "\n".join(text for text in texts if text)


class WebChat:
    """What the page runs: `respond(message, history, *settings)` yields the answer so far.

    Args:
        model: a generative any2text (or Llava) model, in eval mode.
        processor: its processor.
    """

    def __init__(self, model: Any, processor: Any):
        self.model, self.processor = model, processor
        self.accepted = accepted_media(processor, model.config)

    def user_content(self, files: list[str], text: str) -> list[dict]:
        """The content of a user turn: each file decoded (or a `ChatMediaError`), then the text."""
        content = []
        for path in files:
            name = f"`{os.path.basename(path)}`"
            content.append(load_chat_medium(path, media_kind(path, name), self.processor, self.accepted, name))
        return content + ([{"type": "text", "text": text}] if text else [])

    def conversation(self, message: dict, history: list[dict]) -> Conversation:
        """The messages for the model: the history's usable turns, then `message` (`{"text", "files"}`).

        A history turn whose media cannot be used was answered with the error; it and that answer are left out.
        Consecutive messages of one role are one turn.
        """
        conversation: list[dict] = []
        skipping = False
        for entry in history:
            files, text = _split(entry.get("content"))
            if entry.get("role") == "user":
                try:
                    content = self.user_content(files, text)
                except ChatMediaError:
                    skipping = True
                    continue
                skipping = False
            elif entry.get("role") == "assistant" and not skipping:
                content = [{"type": "text", "text": text}]
            else:
                continue
            if conversation and conversation[-1]["role"] == entry["role"]:
                conversation[-1]["content"] += content
            else:
                conversation.append({"role": entry["role"], "content": content})
        files = [path for path in (_file_path(item) for item in message.get("files") or []) if path is not None]
        conversation.append({"role": "user", "content": self.user_content(files, message.get("text") or "")})
        return conversation

    def respond(
        self,
        message: dict,
        history: list[dict],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ) -> Iterator[str]:
        """Yields the answer as it grows; a bad medium yields one message saying what is wrong (no traceback)."""
        if not (message.get("text") or "").strip() and not message.get("files"):
            yield "Type a message, or attach an image, an audio clip or a video."
            return
        try:
            conversation = self.conversation(message, history)
        except ChatMediaError as error:
            yield str(error)
            return
        settings: dict[str, Any] = {"repetition_penalty": float(repetition_penalty)}
        if temperature > 0:
            settings.update(do_sample=True, temperature=float(temperature), top_p=float(top_p))
        yield from self.stream(conversation, int(max_new_tokens), **settings)

    def stream(self, conversation: Conversation, max_new_tokens: int, **generate_kwargs: Any) -> Iterator[str]:
        """`generate_batch` on one conversation in a thread; yields the decoded text so far, then its answer."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        outcome: dict[str, Any] = {}

        def generate() -> None:
            try:
                (outcome["answer"],) = generate_batch(
                    self.model, self.processor, [conversation], max_new_tokens, streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]), **generate_kwargs,
                )  # fmt: skip
            except Exception as error:  # shown in the chat; the iteration below must not wait forever
                outcome["error"] = error
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        text = ""
        try:
            for piece in streamer:
                text += piece
                if text.strip():
                    yield text.strip()
        finally:
            stop.set()  # reached early only when the page stops listening
        thread.join()
        if "error" in outcome:
            error = outcome["error"]
            logger.error(f"Generation failed: {type(error).__name__}: {error}")
            yield f"Generation failed: {error}"
            return
        yield outcome["answer"]


def build_app(
    model: Any, processor: Any, title: str | None = None, analytics_enabled: bool = False
) -> Any:  # a gradio.ChatInterface
    """The web chat page for `model` (not launched); its streaming endpoint is `/chat`."""
    gr = import_gradio()
    chat = WebChat(model, processor)
    takes = describe_media(chat.accepted)
    textbox = gr.MultimodalTextbox(
        # No `file_types`: gradio would refuse other files with a pop-up; `respond` explains them in the chat.
        file_count="multiple",
        sources=["upload", "microphone"] if "audio" in chat.accepted else ["upload"],
        placeholder=f"Ask about an image, an audio clip or a video (this model takes {takes})",
    )
    settings = [
        gr.Slider(1, 2048, value=256, step=1, label="max_new_tokens"),
        gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0: greedy)"),
        gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p (when sampling)"),
        gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="repetition_penalty"),
    ]
    return gr.ChatInterface(
        chat.respond,
        multimodal=True,
        textbox=textbox,
        additional_inputs=settings,
        additional_inputs_accordion="Generation settings",
        title=title or "any2text chat",
        description=f"This model takes {takes}. Answers stream as they are generated.",
        analytics_enabled=analytics_enabled,
        api_name="chat",
    )


def launch_web_chat(
    model: Any,
    processor: Any,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    analytics_enabled: bool = False,
    title: str | None = None,
    prevent_thread_lock: bool = False,
) -> Any:
    """Builds the page and serves it at `http://{host}:{port}` (port `None`: the first free one from 7860).

    Blocks until interrupted unless `prevent_thread_lock=True` (then `.close()` the returned app when done).
    """
    app = build_app(model, processor, title=title, analytics_enabled=analytics_enabled)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock)
    return app


__all__ = ["WebChat", "build_app", "import_gradio", "launch_web_chat"]
