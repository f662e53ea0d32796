"""Shared offline fixtures: the one factory of tiny models, processors and checkpoints, and the torchrun launcher.

Every tiny model in the tests comes from `LlamaVisionAudioModelTester` below (configs from
`any2text.builders.presets`). Folders that tests only read (a saved checkpoint, training data, a stage-1 output) are
session-scoped and written once; a test that changes one copies it first.
"""

import copy
import functools
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    ClapFeatureExtractor,
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

import any2text  # noqa: E402
from any2text import (  # noqa: E402
    LlamaVisionAudioConfig,
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioProcessor,
)
from any2text.builders.presets import (  # noqa: E402
    cheap_audio_config,
    cheap_feature_extractor,
    tiny_audio_config,
    tiny_text_config,
    tiny_tokenizer_path,
    tiny_vision_config,
)
from any2text.models.llama_vision_audio.processing_llama_vision_audio import DEFAULT_CHAT_TEMPLATE  # noqa: E402

assert any2text  # importing registers the Auto classes

REPO = Path(__file__).resolve().parents[1]


def tiny_image_processor() -> CLIPImageProcessor:
    """CLIP's processor for the tiny 8x8 vision tower."""
    return CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})


class LlamaVisionAudioModelTester:
    """The tiny models: a 2-layer Llama with hidden size 32, an 8x8 image with 2x2 patches, a 4-stage tiny CLAP.

    Audio comes in two sizes: the default CLAP (10 s at 48 kHz, 64 tokens a clip) that the model and processor tests
    check against transformers' defaults, and `cheap_audio=True` (2 s at 16 kHz, 16 tokens a clip) for everything
    that trains.
    """

    def __init__(self):
        tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
        # As the builders add them: `<image>`, `<audio>`, then `<video>` (videos are frames through the vision tower).
        tokenizer.add_special_tokens(
            {"pad_token": "<pad>", "additional_special_tokens": ["<image>", "<audio>", "<video>"]}
        )
        self.tokenizer = tokenizer
        self.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        self.audio_token_id = tokenizer.convert_tokens_to_ids("<audio>")
        self.video_token_id = tokenizer.convert_tokens_to_ids("<video>")

    def get_tokenizer(self):
        """A fresh copy of the tokenizer, for a processor a test may change."""
        return copy.deepcopy(self.tokenizer)

    def get_config(
        self, vision: bool = True, audio: bool = True, cheap_audio: bool = False, **kwargs
    ) -> LlamaVisionAudioConfig:
        """The tiny config; with the vision tower it reads video (`video_token_id` is `<video>`'s), as built ones do.
        Pass `video_token_id=None` for a model without video."""
        if vision:
            kwargs.setdefault("video_token_id", self.video_token_id)
        text_config = tiny_text_config(vocab_size=len(self.tokenizer))
        text_config.pad_token_id = self.tokenizer.pad_token_id
        audio_config = (cheap_audio_config() if cheap_audio else tiny_audio_config()) if audio else None
        return LlamaVisionAudioConfig(
            text_config=text_config,
            vision_config=tiny_vision_config() if vision else None,
            audio_config=audio_config,
            image_token_id=self.image_token_id,
            audio_token_id=self.audio_token_id,
            **kwargs,
        )

    def get_model(self, seed: int = 0, **kwargs) -> LlamaVisionAudioForConditionalGeneration:
        torch.manual_seed(seed)
        model = LlamaVisionAudioForConditionalGeneration._from_config(self.get_config(**kwargs))
        return model.eval()

    def get_processor(self, config: LlamaVisionAudioConfig | None = None, **fe_kwargs) -> LlamaVisionAudioProcessor:
        """The processor for `config` (default: the default-CLAP one), sharing this tester's tokenizer."""
        config = config or self.get_config()
        return LlamaVisionAudioProcessor(
            image_processor=tiny_image_processor(),
            feature_extractor=ClapFeatureExtractor(**fe_kwargs),
            tokenizer=self.tokenizer,
            image_seq_length=config.image_seq_length,
            audio_seq_length=config.audio_seq_length,
        )

    def get_cheap_processor(self, audio_seq_length: int = 16, image_seq_length: int = 16) -> LlamaVisionAudioProcessor:
        """The processor of the cheap-audio model, with a tokenizer of its own."""
        return LlamaVisionAudioProcessor(
            image_processor=tiny_image_processor(),
            feature_extractor=cheap_feature_extractor(),
            tokenizer=self.get_tokenizer(),
            image_seq_length=image_seq_length,
            audio_seq_length=audio_seq_length,
        )

    def save_checkpoint(self, path: Path, seed: int = 0) -> Path:
        """A cheap-audio LlamaVisionAudio checkpoint (CLIP 8x8 + cheap CLAP + 2-layer Llama) with its processor."""
        config = self.get_config(cheap_audio=True)
        torch.manual_seed(seed)
        LlamaVisionAudioForConditionalGeneration._from_config(config).save_pretrained(path)
        self.get_cheap_processor(config.audio_seq_length, config.image_seq_length).save_pretrained(path)
        return path

    def get_llava_processor(self) -> LlavaProcessor:
        # CLIP has a CLS embedding: 16 patches + 1, of which the "default" strategy drops the CLS one.
        return LlavaProcessor(
            image_processor=tiny_image_processor(),
            tokenizer=self.get_tokenizer(),
            patch_size=2,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=DEFAULT_CHAT_TEMPLATE,
        )

    def save_llava_checkpoint(self, path: Path, seed: int = 0) -> Path:
        """A stock `LlavaForConditionalGeneration` checkpoint (what the builders emit for the image-only recipe)."""
        processor = self.get_llava_processor()
        text_config = tiny_text_config(vocab_size=len(self.tokenizer))
        text_config.pad_token_id = self.tokenizer.pad_token_id
        config = LlavaConfig(
            text_config=text_config,
            vision_config=tiny_vision_config(),
            image_token_id=self.image_token_id,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
        )
        torch.manual_seed(seed)
        LlavaForConditionalGeneration._from_config(config).save_pretrained(path)
        processor.save_pretrained(path)
        return path


@functools.cache
def tiny_models() -> LlamaVisionAudioModelTester:
    """The session's factory (its tokenizer loaded once), for helpers that are not fixtures."""
    return LlamaVisionAudioModelTester()


@pytest.fixture(scope="session")
def tester() -> LlamaVisionAudioModelTester:
    return tiny_models()


@pytest.fixture(scope="session")
def processor(tester) -> LlamaVisionAudioProcessor:
    return tester.get_processor()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tester) -> Path:
    """A cheap-audio LlamaVisionAudio checkpoint saved once; read-only (copy it to change it)."""
    return tester.save_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint") / "lva")


@pytest.fixture(scope="session")
def tiny_llava_checkpoint(tmp_path_factory, tester) -> Path:
    """A stock Llava checkpoint saved once; read-only (copy it to change it)."""
    return tester.save_llava_checkpoint(tmp_path_factory.mktemp("tiny_llava_checkpoint") / "llava")


def make_image(color: str = "red", size: int = 20) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def make_tone(freq: float = 440.0, seconds: float = 1.0, sampling_rate: int = 48000) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Training data and a shared stage-1 output

SAMPLING_RATE = 16000
ANSWERS = {
    "image": ["red", "green", "blue"],
    "audio": ["low", "high"],
    "video": ["brighter", "darker"],
    "text": ["yes", "no"],
}
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
PITCHES = {"low": 300.0, "high": 5000.0}


def write_llava_data(folder: Path, kinds: list[str], seed: int = 0, seconds: float = 0.5) -> Path:
    """A LLaVA-format `data.json` with one row per entry of `kinds` (`image`, `audio`, `both`, `video`, `text`), in
    that order.

    Media are small PNG / WAV files under `folder` (a video is a folder of 8 frame PNGs that get brighter or darker),
    referenced by relative path; answers follow from the media.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, kind in enumerate(kinds):
        row: dict = {"id": str(i)}
        questions, answers = [], []
        if kind in ("image", "both"):
            color = str(rng.choice(ANSWERS["image"]))
            Image.new("RGB", (16, 16), COLORS[color]).save(folder / f"img{i}.png")
            row["image"] = f"img{i}.png"
            questions.append("<image>\nWhat color?")
            answers.append(color)
        if kind in ("audio", "both"):
            pitch = str(rng.choice(ANSWERS["audio"]))
            t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
            sf.write(
                folder / f"snd{i}.wav",
                (0.5 * np.sin(2 * np.pi * PITCHES[pitch] * t)).astype(np.float32),
                SAMPLING_RATE,
            )
            row["audio"] = f"snd{i}.wav"
            questions.append("<audio>\nWhat pitch?")
            answers.append(pitch)
        if kind == "video":
            trend = str(rng.choice(ANSWERS["video"]))
            (folder / f"vid{i}").mkdir(exist_ok=True)
            for t in range(8):  # the processor's 8 frames: nothing resampled
                level = 30 * t if trend == "brighter" else 210 - 30 * t
                Image.new("RGB", (16, 16), (level, level, level)).save(folder / f"vid{i}" / f"frame_{t:02d}.png")
            row["video"] = f"vid{i}"
            questions.append("<video>\nBrighter or darker?")
            answers.append(trend)
        if kind == "text":
            questions.append("Is it?")
            answers.append(str(rng.choice(ANSWERS["text"])))
        turns = []
        for question, answer in zip(questions, answers):
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        row["conversations"] = turns
        rows.append(row)
    path = folder / "data.json"
    path.write_text(json.dumps(rows))
    return path


TRAIN_KINDS = ["image", "audio", "both", "text"] * 3


@pytest.fixture(scope="session")
def train_workdir(tmp_path_factory, tester) -> Path:
    """`base/` (the tiny checkpoint) and `data/data.json` (12 rows, every modality): what the training tests read."""
    root = tmp_path_factory.mktemp("train")
    tester.save_checkpoint(root / "base")
    write_llava_data(root / "data", TRAIN_KINDS)
    return root


def train_args(root: Path, **overrides) -> list[str]:
    """The training flags the tests share (12 rows of `root/data`, batches of 4, 2 epochs, CPU, no saves)."""
    args = {
        "train_datasets": f"{root / 'data' / 'data.json'},",
        "train_template": "LLaVA,",
        "per_device_train_batch_size": "4",
        "num_train_epochs": "2",
        "logging_steps": "1",
        "save_strategy": "no",
        "use_cpu": "True",
        "report_to": "none",
        "learning_rate": "5e-3",
        "seed": "0",
        "log_level": "warning",
        "disable_tqdm": "True",
    }
    args.update(overrides)
    return [item for key, value in args.items() for item in (f"--{key}", value)]


@dataclass
class Stage1Output:
    """Stage 1 (projectors only) trained once from `workdir/base` on `workdir/data`; read-only, copy it to change it."""

    workdir: Path
    path: Path
    log: list[str]  # the messages the `any2text` loggers wrote at INFO during the run


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="session")
def stage1_output(train_workdir) -> Stage1Output:
    from any2text.training.train import main

    path = train_workdir / "stage1"
    logger, handler = logging.getLogger("any2text"), _Messages()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        main(
            ["--model_name_or_path", str(train_workdir / "base"), "--output_dir", str(path)]
            + train_args(train_workdir, learning_rate="2e-2", log_level="info")
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return Stage1Output(train_workdir, path, handler.messages)


# ---------------------------------------------------------------------------------------------------------------------
# Two CPU ranks under torchrun + DeepSpeed ZeRO-3

CPU_DS_CONFIG = REPO / "examples" / "ds_z3_cpu_config.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def torchrun():
    """`torchrun(module, *args, timeout=...)`: run `python -m module args --deepspeed <ZeRO-3 CPU config>` on two CPU
    ranks from the repository root; returns stdout + stderr, fails with the tail of both if the run fails or hangs.

    Skips the test where torchrun or deepspeed is not installed.
    """
    executable = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if executable is None or importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs deepspeed and torchrun")
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / "build" / "torch_extensions")),
    }

    def launch(module: str, *args: str, nproc: int = 2, timeout: int = 600) -> str:
        command = [executable, "--nproc_per_node", str(nproc), "--master_port", str(_free_port()), "-m", module,
                   *args, "--deepspeed", str(CPU_DS_CONFIG), "--use_cpu", "True"]  # fmt: skip
        try:
            result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            out = (error.stdout or b"").decode(errors="replace") + (error.stderr or b"").decode(errors="replace")
            pytest.fail(f"`torchrun -m {module}` still ran after {timeout} s (a hang?):\n{out[-9000:]}")
        assert result.returncode == 0, (
            f"`torchrun -m {module}` exited with {result.returncode}:\n"
            + result.stdout[-3000:]
            + result.stderr[-6000:]
        )
        return result.stdout + result.stderr

    return launch


# ---------------------------------------------------------------------------------------------------------------------
# The shell scripts in examples/, run for real with stand-in launchers

# Stands in for `deepspeed` and `any2text` on PATH: records its name and argument list (one JSON line) and succeeds.
_RECORDER = """#!{python}
import json, os, sys
with open(os.environ["ANY2TEXT_EXAMPLE_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
"""


@dataclass
class ExampleCommands:
    """What an example script ran: each `deepspeed --module M` call's arguments by module, and `any2text` calls."""

    modules: dict[str, list[list[str]]]
    cli: list[list[str]]


def run_example_script(script: Path, tmp_path: Path, **env: str) -> ExampleCommands:
    """Run `bash script` from the repository root, as its usage line says, with `deepspeed` and `any2text` replaced by
    recorders: the arguments are the ones bash really expands (defaults, `$VAR`s, quoting, line continuations)."""
    bin_dir = tmp_path / "example-bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("deepspeed", "any2text"):
        (bin_dir / name).write_text(_RECORDER.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "example-commands.jsonl"
    log.unlink(missing_ok=True)
    run_env = {
        **os.environ,
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "ANY2TEXT_EXAMPLE_LOG": str(log),
    }
    result = subprocess.run(["bash", str(script)], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"`bash {script.name}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    commands = ExampleCommands({}, [])
    for line in log.read_text().splitlines() if log.exists() else []:
        name, *words = json.loads(line)
        if name == "deepspeed":
            module = words.index("--module")
            commands.modules.setdefault(words[module + 1], []).append(words[module + 2 :])
        else:
            commands.cli.append(words)
    return commands
