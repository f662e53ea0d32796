"""The seed's "Model Usage" snippet for the image+audio+text model, against an any2text checkpoint.

    python examples/seed_usage_llama_vision_audio.py ./llama-vision-audio dog.wav

The one change from the seed: `sampling_rate=` is passed. The seed guessed it, which is how its 16 kHz clips were
silently read as 48 kHz audio; any2text refuses to guess and resamples whatever rate you name.
"""

import sys

import soundfile

from any2text import LlamaVisionAudioForConditionalGeneration, LlamaVisionAudioProcessor

path = sys.argv[1]
processor = LlamaVisionAudioProcessor.from_pretrained(path)
model = LlamaVisionAudioForConditionalGeneration.from_pretrained(path)

prompt = (
    "<|start_header_id|>user<|end_header_id|>: <audio> Give an overview of what's in the audio.\n"
    "<|start_header_id|>assistant<|end_header_id|>: "
)
audio, sampling_rate = soundfile.read(sys.argv[2], dtype="float32")

inputs = processor(text=prompt, raw_speech=audio, sampling_rate=sampling_rate, return_tensors="pt")
outputs = model.generate(**inputs, max_new_tokens=int(sys.argv[3]) if len(sys.argv) > 3 else 1024)
outputs = processor.decode(outputs[0], skip_special_tokens=True)
print(outputs)
