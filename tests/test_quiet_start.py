"""No torchvision warning: building, loading (inference and training paths) and processing name the image processor
for this machine (PIL without torchvision, the torchvision one with it), so transformers never falls back noisily.

Each run is a fresh Python: transformers warns once per process, and the test process has warned already.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from transformers.utils import is_torchvision_available

import any2text
from builders_fixtures import parts  # noqa: F401

# transformers 5.24's words, when `CLIPImageProcessor` is imported without torchvision.
FALLBACK_WARNING = "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
EXPECTED_CLASS = "CLIPImageProcessor" if is_torchvision_available() else "CLIPImageProcessorPil"


def _run(script: str, cwd: Path) -> str:
    """Run `script` in a fresh Python; its stdout + stderr (where transformers' warnings go)."""
    # The sources under test first (the test's own `any2text`), whatever the working folder.
    path = os.pathsep.join(filter(None, [str(Path(any2text.__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "info"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return output


def test_build_load_and_process_print_no_torchvision_warning(parts, tmp_path):  # noqa: F811
    output = _run(
        f"""
        from PIL import Image

        from any2text.builders import build_llama_vision, build_llama_vision_audio
        from any2text.inference import load_inference_model
        from any2text.training.arguments import ModelArguments
        from any2text.training.model import load_model_and_processor

        # The vision tower's own processor (loaded), and the default one of a model without a vision tower (made).
        build_llama_vision_audio("{parts.llama}", "{parts.clip}", "{parts.clap}", save_path="both", dtype="float32")
        build_llama_vision_audio("{parts.llama}", None, "{parts.clap}", save_path="audio", dtype="float32")
        build_llama_vision("{parts.llama}", "{parts.clip}", save_path="llava", dtype="float32")
        for folder in ("both", "audio", "llava"):
            _, processor = load_inference_model(folder, device="cpu")
            _, trained = load_model_and_processor(ModelArguments(model_name_or_path=folder))
            for p in (processor, trained):
                print(folder, "uses", type(p.image_processor).__name__)
            if folder != "audio":  # no `<image>` token without a vision tower
                image = Image.new("RGB", (20, 20), "red")
                batch = processor(text=["<image> what colour?"], images=[image], return_tensors="pt")
                assert batch["pixel_values"].shape[-2:] == (8, 8), batch["pixel_values"].shape
        print("done")
        """,
        tmp_path,
    )
    assert "done" in output
    assert FALLBACK_WARNING not in output and "torchvision" not in output, output[-3000:]
    for folder in ("both", "audio", "llava"):
        assert output.count(f"{folder} uses {EXPECTED_CLASS}\n") == 2, output[-3000:]


def test_the_warning_checked_for_is_what_transformers_prints(tmp_path):
    """The control: importing the plain name does print it here (when torchvision is absent)."""
    output = _run("from transformers import CLIPImageProcessor", tmp_path)
    assert (FALLBACK_WARNING in output) == (not is_torchvision_available())
