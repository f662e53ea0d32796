"""Walking a conversation's media: the one place that knows where media sit in messages.

Messages are the project-wide format (`any2text.data.templates`): `[{"role": ..., "content": [part, ...]}]`, a part
being `{"type": "text", "text": ...}` or a medium `{"type": <content type>, <name>: ref}` of a modality in the table
(`any2text.modalities`). Three walks cover every use::

    >>> messages = [{"role": "user", "content": [{"type": "image", "image": "cat.png"},
    ...                                          {"type": "text", "text": "What?"}]}]
    >>> media_refs(messages)["image"]
    ['cat.png']
    >>> map_media(messages, lambda modality, ref: ref.upper())[0]["content"][0]
    {'type': 'image', 'image': 'CAT.PNG'}
    >>> strip_media(messages)[0]["content"]
    [{'type': 'text', 'text': 'What?'}]

`map_media` and `strip_media` return copies and keep a preference pair's type (`with_messages`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..modalities import MODALITIES, Modality, by_content_type

Message = dict[str, Any]


def _parts(message: Message) -> list[dict[str, Any]]:
    content = message.get("content")
    return content if isinstance(content, list) else []


def iter_media(messages: list[Message]) -> Iterator[tuple[Modality, Any]]:
    """`(modality, ref)` of every medium in the conversation, in order of appearance."""
    for message in messages:
        for part in _parts(message):
            modality = by_content_type(part.get("type")) if isinstance(part, dict) else None
            if modality is not None:
                yield modality, part[modality.name]


def media_refs(messages: list[Message]) -> dict[str, list[Any]]:
    """Modality name -> its references, in order of appearance; every modality of the table has a (maybe empty) list."""
    refs: dict[str, list[Any]] = {name: [] for name in MODALITIES}
    for modality, ref in iter_media(messages):
        refs[modality.name].append(ref)
    return refs


def _rebuild(messages: Any, new: list[Message]) -> Any:
    """`new` in the type of `messages` (a preference pair keeps its rejected answer)."""
    return messages.with_messages(new) if hasattr(messages, "with_messages") else new


def map_media(messages: Any, fn: Callable[[Modality, Any], Any]) -> Any:
    """A copy of `messages` with each medium's reference replaced by `fn(modality, ref)` (decoded, resolved...)."""
    mapped = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [_map_part(part, fn) for part in content]
        mapped.append({**message, "content": content})
    return _rebuild(messages, mapped)


def _map_part(part: Any, fn: Callable[[Modality, Any], Any]) -> Any:
    modality = by_content_type(part.get("type")) if isinstance(part, dict) else None
    if modality is None:
        return part
    return {**part, modality.name: fn(modality, part[modality.name])}


def strip_media(messages: Any) -> Any:
    """A copy of `messages` with every medium removed (the text kept): the conversation with its media withheld."""
    stripped = [
        {**m, "content": [part for part in m["content"] if by_content_type(part.get("type")) is None]}
        if isinstance(m.get("content"), list)
        else m
        for m in messages
    ]
    return _rebuild(messages, stripped)


def media_as_types(messages: list[Message]) -> list[Message]:
    """`messages` with each medium reduced to its type (`{"type": "image"}`): what a chat template needs to place
    its placeholder, without the references (which may be large decoded objects)."""
    return [
        {
            **m,
            "content": [
                {"type": part["type"]} if by_content_type(part.get("type")) else part for part in m["content"]
            ],
        }
        if isinstance(m.get("content"), list)
        else m
        for m in messages
    ]


__all__ = ["iter_media", "map_media", "media_as_types", "media_refs", "strip_media"]
