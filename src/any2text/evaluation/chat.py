"""`any2text chat`: talk to a checkpoint about images, audio clips and videos, in the terminal or in a local web page.

    any2text chat --model ./stage2 --image cat.jpg --prompt "What is in the image?"     # one-shot
    any2text chat --model ./stage2 --audio dog.wav                                       # interactive
    any2text chat --model ./stage2 --video clip.mp4 --prompt "What happens?"             # needs any2text[video]
    any2text chat --model ./stage2 --web                                                 # http://127.0.0.1:7860

In the terminal the media go into the first user turn; later turns keep the conversation (and the media) as
context. They are checked (a file, readable, a kind the checkpoint takes) before the model loads, and a bad one is
one line on stderr and exit code 2. A video is sampled to the processor's `num_frames` (or `fps`) frames when it is
read; a folder of frame images (sorted by name) is a video too. Greedy decoding by default; `--temperature` > 0
samples. `--web` serves `any2text.evaluation.web_chat` (needs `pip install "any2text[web]"`).
"""

import mimetypes
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoConfig, AutoProcessor, HfArgumentParser

from ..data.media import MediaDecodeError
from ..inference import DTypeName, decode_media, generate_batch, load_inference_model
from ..modalities import MODALITIES, get_modality

# The kinds a file can be (its MIME type's first part): the modality table's names.
MEDIA_KINDS = tuple(MODALITIES)
# How each kind is named in messages; a modality without an entry is named by its own name.
_FORMATS = {
    "image": "PNG, JPEG, WebP, GIF or BMP",
    "audio": "WAV, FLAC, OGG or MP3",
    "video": "MP4, WebM, MKV or AVI, or a folder of frame images",
}
_PLURALS = {"image": "images", "audio": "audio", "video": "videos"}


@dataclass
class ChatArguments:
    model: str = field(metadata={"help": "Checkpoint folder or Hub id."})
    image: str | None = field(default=None, metadata={"help": "Image file to talk about."})
    audio: str | None = field(default=None, metadata={"help": "Audio file to talk about (any rate, mono or not)."})
    video: str | None = field(
        default=None, metadata={"help": "Video file (or folder of frames) to talk about; needs any2text[video]."}
    )
    prompt: str | None = field(default=None, metadata={"help": "Ask one question, print the answer and exit."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation budget per answer."})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy; > 0 samples."})
    dtype: DTypeName = field(default="auto", metadata={"help": "auto, bfloat16, float16 or float32."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ...; default: cuda if available."})
    web: bool = field(default=False, metadata={"help": "Serve a web chat (gradio) instead of the terminal one."})
    host: str = field(default="127.0.0.1", metadata={"help": "--web: address to bind (0.0.0.0: every interface)."})
    port: int = field(default=7860, metadata={"help": "--web: port to serve on."})
    share: bool = field(
        default=False, metadata={"help": "--web: also open a public gradio.live link (anyone with it can chat)."}
    )
    analytics_enabled: bool = field(default=False, metadata={"help": "--web: allow gradio's usage telemetry."})


class ChatMediaError(ValueError):
    """A file the chat cannot use: missing, a folder (other than a video's frames), of an unsupported type,
    undecodable, or a medium (image / audio / video) the checkpoint does not take. The message names the file and
    what to send instead."""


def accepted_media(processor: Any, config: Any) -> tuple[str, ...]:
    """The media kinds a checkpoint takes (modality table order): those whose tower has a config in `config`
    (`vision_config` for images and video), whose placeholder has an id there, and whose placeholder
    (`processor.video_token`) the tokenizer knows (a checkpoint built before video has no `<video>`)."""
    vocab = getattr(processor, "tokenizer", processor).get_vocab()
    kinds = []
    for name, modality in MODALITIES.items():
        tower_config = getattr(config, modality.tower.removesuffix("_tower") + "_config", None)
        token = modality.processor_token(processor)
        if tower_config is not None and getattr(config, modality.token_id_attr, None) is not None and token in vocab:
            kinds.append(name)
    return tuple(kinds)


def describe_media(accepted: tuple[str, ...]) -> str:
    """`"images and audio"`, `"images"`, ... or `"text only"`: what a checkpoint with `accepted_media` takes."""
    names = [_PLURALS.get(kind, f"{kind}s") for kind in accepted]
    return (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)) or "text only"


def media_kind(path: str, name: str | None = None) -> str:
    """`"image"`, `"audio"` or `"video"` from the file's type (its extension), or a `ChatMediaError` naming what it
    is."""
    name = name or f"`{path}`"
    mime = mimetypes.guess_type(path)[0] or ""
    kind = mime.split("/")[0]
    if kind in MEDIA_KINDS:
        return kind
    found = f"a `{mime}` file" if mime else "a file of unknown type"
    raise ChatMediaError(
        f"{name} is {found}, not an image, audio clip or video. Send an image ({_FORMATS['image']}), audio "
        f"({_FORMATS['audio']}) or a video ({_FORMATS['video']})."
    )


def load_chat_medium(path: str, kind: str, processor: Any, accepted: tuple[str, ...], name: str | None = None) -> dict:
    """The decoded content item (`{"type": kind, kind: ...}`) for `path`, or a `ChatMediaError` saying what is wrong.

    Decoding is `any2text.inference.decode_media`'s (the processor's sampling rate for audio); only the messages
    are the chat's own. `name` is how the file is shown (default: the path).
    """
    name = name or f"`{path}`"
    if kind not in accepted:
        raise ChatMediaError(
            f"This model does not take {kind} (it takes {describe_media(accepted)}); {name} was not sent."
        )
    if os.path.isdir(path) and not get_modality(kind).folders:
        raise ChatMediaError(f"{name} is a folder; pass an {kind} file.")
    if not os.path.exists(path):
        where = "" if os.path.isabs(path) else f" (a relative path is read from the current folder, {os.getcwd()})"
        raise ChatMediaError(f"{name} does not exist{where}; check the path.")
    item = {"type": kind, kind: os.path.abspath(path)}
    try:
        return decode_media([{"role": "user", "content": [item]}], processor)[0]["content"][0]
    except (MediaDecodeError, ValueError) as error:
        # A decode error's own message is written for dataset rows; its cause is what went wrong with the file.
        reason = error.__cause__ if isinstance(error, MediaDecodeError) and error.__cause__ else error
        article = "an" if kind[0] in "aeiou" else "a"
        raise ChatMediaError(
            f"{name} could not be read as {kind} ({reason}). Send {article} {kind} file ({_FORMATS.get(kind, kind)})."
        ) from error


class ChatSession:
    """A conversation with a model: `ask(text)` returns the answer and keeps the history.

    The media are decoded once, when the session starts, and stay in the first user turn.
    """

    def __init__(self, model: Any, processor: Any, image: Any = None, audio: Any = None, video: Any = None):
        self.model, self.processor = model, processor
        given = {"image": image, "audio": audio, "video": video}
        media = [{"type": kind, kind: value} for kind, value in given.items() if value is not None]
        self.media = decode_media([{"role": "user", "content": media}], processor)[0]["content"]
        self.messages: list[dict] = []

    def ask(self, text: str, max_new_tokens: int = 256, temperature: float = 0.0) -> str:
        content = self.media if not self.messages else []
        self.messages.append({"role": "user", "content": [*content, {"type": "text", "text": text}]})
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
        (answer,) = generate_batch(self.model, self.processor, [self.messages], max_new_tokens, **sampling)
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return answer


def check_media(args: ChatArguments) -> dict[str, Any]:
    """`--image` / `--audio` / `--video` decoded with the checkpoint's processor, before the model loads
    (`ChatMediaError`)."""
    wanted = {kind: getattr(args, kind) for kind in MEDIA_KINDS if getattr(args, kind) is not None}
    if not wanted:
        return {}
    processor = AutoProcessor.from_pretrained(args.model)
    accepted = accepted_media(processor, AutoConfig.from_pretrained(args.model))
    return {kind: load_chat_medium(path, kind, processor, accepted)[kind] for kind, path in wanted.items()}


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(ChatArguments).parse_args_into_dataclasses(args=argv)
    if args.web:
        return _serve(args)
    try:
        media = check_media(args)
    except ChatMediaError as error:
        print(f"any2text chat: {error}", file=sys.stderr)
        return 2
    model, processor = load_inference_model(args.model, dtype=args.dtype, device=args.device)
    session = ChatSession(model, processor, **media)
    if args.prompt is not None:
        print(session.ask(args.prompt, args.max_new_tokens, args.temperature))
        return 0
    print("any2text chat: type a message, an empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            text = input("> ").strip()
        except EOFError:
            break
        if not text:
            break
        print(session.ask(text, args.max_new_tokens, args.temperature))
    return 0


def _serve(args: ChatArguments) -> int:
    given = [f"--{name}" for name in (*MEDIA_KINDS, "prompt") if getattr(args, name) is not None]
    if given:
        print(f"any2text chat: {', '.join(given)} cannot go with --web; attach media in the page.", file=sys.stderr)
        return 2
    from .web_chat import import_gradio, launch_web_chat

    try:
        import_gradio()  # before the model loads: a missing extra should not cost a model load
    except ImportError as error:
        print(f"any2text chat: {error}", file=sys.stderr)
        return 2
    model, processor = load_inference_model(args.model, dtype=args.dtype, device=args.device)
    try:
        launch_web_chat(
            model, processor, host=args.host, port=args.port, share=args.share,
            analytics_enabled=args.analytics_enabled, title=f"any2text chat: {args.model}",
        )  # fmt: skip
    except OSError as error:  # the port is taken, or the address is not this machine's
        print(
            f"any2text chat: cannot serve on {args.host}:{args.port} ({error}); pass another --port.", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
