"""`any2text chat`: talk to a checkpoint about an image and/or an audio clip.

    any2text chat --model ./stage2 --image cat.jpg --prompt "What is in the image?"     # one-shot
    any2text chat --model ./stage2 --audio dog.wav                                       # interactive

The media go into the first user turn; later turns keep the conversation (and the media) as context. Greedy
decoding by default; `--temperature` > 0 samples.
"""

import sys
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser

from ..inference import DTypeName, decode_media, generate_batch, load_inference_model


@dataclass
class ChatArguments:
    model: str = field(metadata={"help": "Checkpoint folder or Hub id."})
    image: str | None = field(default=None, metadata={"help": "Image file to talk about."})
    audio: str | None = field(default=None, metadata={"help": "Audio file to talk about (any rate, mono or not)."})
    prompt: str | None = field(default=None, metadata={"help": "Ask one question, print the answer and exit."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation budget per answer."})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy; > 0 samples."})
    dtype: DTypeName = field(default="auto", metadata={"help": "auto, bfloat16, float16 or float32."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ...; default: cuda if available."})


class ChatSession:
    """A conversation with a model: `ask(text)` returns the answer and keeps the history.

    The media are decoded once, when the session starts, and stay in the first user turn.
    """

    def __init__(self, model: Any, processor: Any, image: Any = None, audio: Any = None):
        self.model, self.processor = model, processor
        media = [{"type": "image", "image": image}] if image is not None else []
        media += [{"type": "audio", "audio": audio}] if audio is not None else []
        self.media = decode_media([{"role": "user", "content": media}], processor)[0]["content"]
        self.messages: list[dict] = []

    def ask(self, text: str, max_new_tokens: int = 256, temperature: float = 0.0) -> str:
        content = self.media if not self.messages else []
        self.messages.append({"role": "user", "content": [*content, {"type": "text", "text": text}]})
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
        (answer,) = generate_batch(self.model, self.processor, [self.messages], max_new_tokens, **sampling)
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return answer


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(ChatArguments).parse_args_into_dataclasses(args=argv)
    model, processor = load_inference_model(args.model, dtype=args.dtype, device=args.device)
    session = ChatSession(model, processor, image=args.image, audio=args.audio)
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


if __name__ == "__main__":
    sys.exit(main())
