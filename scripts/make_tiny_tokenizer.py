"""Regenerate the committed offline tokenizer used by tests and the demo.

    python scripts/make_tiny_tokenizer.py src/any2text/builders/assets/tiny_llama3_tokenizer

A byte-level BPE (vocabulary 1024) with Llama-3's special tokens and chat template, so the
tiny preset exercises the same header format as Llama-3.1-Instruct without the Hub.
"""

import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'text' %}{{- item['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

WORDS = (
    "the a an is are what which how many of in on at to and or with this that image picture audio clip sound "
    "question answer describe color colour shape position left right top bottom center middle red green blue "
    "yellow purple orange white black gray circle square triangle star beep beeps tone pitch high low loud quiet "
    "one two three four five six seven eight nine ten zero yes no true false it there here you can hear see "
    "user assistant system please give short caption overview speech transcribe man woman dog cat car people "
)


def corpus():
    for _ in range(50):
        yield WORDS
        yield WORDS.upper()
        yield WORDS.title()
    yield "0123456789 .,:;!?'\"()[]{}-_/\\+=*&%$#@<>|~`^\n\t"


def main(out: str) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template=LLAMA3_CHAT_TEMPLATE,
        model_max_length=4096,
    )
    fast.save_pretrained(out)


if __name__ == "__main__":
    main(sys.argv[1])
