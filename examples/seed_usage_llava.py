"""The seed's "Model Usage" snippet for the image+text model, as written (a stock Llava checkpoint).

    python examples/seed_usage_llava.py ./llama-vision cat.jpg

Nothing of any2text is imported: `build_llama_vision` writes a stock `LlavaForConditionalGeneration`.
"""

import sys

from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

path = sys.argv[1]
processor = AutoProcessor.from_pretrained(path)
model = LlavaForConditionalGeneration.from_pretrained(path)

prompt = (
    "<|start_header_id|>user<|end_header_id|>: <image> Give an overview of what's in the image.\n"
    "<|start_header_id|>assistant<|end_header_id|>: "
)
image = Image.open(sys.argv[2])

inputs = processor(text=prompt, images=image, return_tensors="pt")
outputs = model.generate(**inputs, max_new_tokens=int(sys.argv[3]) if len(sys.argv) > 3 else 1024)
outputs = processor.decode(outputs[0], skip_special_tokens=True)
print(outputs)
