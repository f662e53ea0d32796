"""lmms-eval's own CLI runs `--model any2text` offline on local image and audio tasks and scores what `any2text eval`
scores on the same items, prediction for prediction.

The references are made so that the score means something on an untrained model: the even items are labelled with
the answer any2text's inference gives (with the image or clip actually seen; unless that answer is unusable as a
label), the others with a wrong one. A runner that dropped or garbled a medium (an audio rate lost, an image
missing) would answer differently and miss those. A third test gives the plug-in's `loglikelihood` the requests
lmms-eval builds for a multiple-choice task.
"""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
from PIL import Image

from any2text.inference import generate_batch, load_inference_model
from any2text.integrations.lmms_eval.adapter import continuation_logprobs, visuals_conversation

# any2text's VQAv2 and Clotho-AQA prompt (their templates' instruction); the lmms-eval tasks below ask the same.
INSTRUCTION = "\nAnswer the question using a single word or phrase."
AUDIO_RATE = 24000  # the clips' own rate; the tiny checkpoint's encoder takes 16 kHz, so every clip is resampled
BATCH_SIZE = 4
ITEMS = 6
MAX_NEW_TOKENS = {"image": 16, "audio": 8}  # the `vqav2` and `clotho_aqa` benchmarks' budgets

TASK_UTILS = '''
import io

import soundfile


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + INSTRUCTION


def doc_to_messages(doc, lmms_eval_specific_kwargs=None):
    """An image item (PIL, decoded by datasets) or an audio item (wav bytes -> {"array", "sampling_rate"})."""
    if "image" in doc:
        media = {"type": "image", "url": doc["image"]}
    else:
        array, rate = soundfile.read(io.BytesIO(doc["audio"]["bytes"]), dtype="float32")
        media = {"type": "audio", "url": {"array": array, "sampling_rate": rate}}
    return [{"role": "user", "content": [media, {"type": "text", "text": doc_to_text(doc)}]}]


def image_target(doc):
    return doc["answers"][0]["answer"]


def doc_to_visual(doc):
    return [doc["image"]]


def choice_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + CHOICE_INSTRUCTION
'''

TASK_YAML = """
task: {name}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: !function utils.doc_to_text
doc_to_messages: !function utils.doc_to_messages
doc_to_target: {target}
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""


# A multiple-choice task: lmms-eval asks `loglikelihood` for " " + each choice after the context (`--force_simple`).
CHOICE_INSTRUCTION = "\nAnswer with the option's text."
CHOICES = ["red", "a small dog", "seven"]
CHOICE_YAML = """
task: any2text_image_choice
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.choice_text
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12 + seed, 10, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(seed: int) -> bytes:
    t = np.arange(AUDIO_RATE) / AUDIO_RATE
    clip = 0.4 * np.sin(2 * np.pi * (200.0 + 700.0 * seed) * t) + 0.05 * np.random.default_rng(seed).standard_normal(
        t.size
    )
    buffer = io.BytesIO()
    soundfile.write(buffer, clip.astype(np.float32), AUDIO_RATE, format="WAV")
    return buffer.getvalue()


def _items(kind: str) -> list[dict]:
    questions = ["What is it?", "Which colour?", "Say a word", "Name it", "Where?", "Why so?"]
    media = (
        (lambda i: {"bytes": _png(i), "path": None})
        if kind == "image"
        else (lambda i: {"bytes": _wav(i), "path": None})
    )
    return [{"id": f"{kind}-{i}", kind: media(i), "question": questions[i]} for i in range(ITEMS)]


def _oracle(model, processor, kind: str, items: list[dict]) -> list[str]:
    """any2text's own answers to the items, generated directly with `any2text.inference`."""
    conversations = [
        [
            {
                "role": "user",
                "content": [
                    {"type": kind, kind: item[kind]},
                    {"type": "text", "text": item["question"] + INSTRUCTION},
                ],
            }
        ]
        for item in items
    ]
    return generate_batch(model, processor, conversations, max_new_tokens=MAX_NEW_TOKENS[kind], batch_size=BATCH_SIZE)


def _usable(answer: str) -> bool:
    """An untrained model's answer that works as a label: any2text reads an answer starting with `[` as a list
    literal (Clotho-AQA's layout), and control characters have no place in a label file."""
    return bool(answer) and answer.isprintable() and not answer.startswith("[")


def _write_data(path: Path, kind: str, items: list[dict], answers: list[str]) -> list[str]:
    """Half of the items labelled with the model's own answer, the others with a wrong one; returns the labels."""
    labels = [answer if i % 2 == 0 and _usable(answer) else f"not this {i}" for i, answer in enumerate(answers)]
    if kind == "image":
        rows = [
            {**item, "question_id": i, "answers": [{"answer": label}] * 10}
            for i, (item, label) in enumerate(zip(items, labels))
        ]
        features = datasets.Features(
            {
                "id": datasets.Value("string"),
                "image": datasets.Image(),
                "question": datasets.Value("string"),
                "question_id": datasets.Value("int64"),
                "answers": datasets.List({"answer": datasets.Value("string")}),
            }
        )
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    else:
        rows = [{**item, "answer": label} for item, label in zip(items, labels)]
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return labels


def _write_choice_data(path: Path, model, processor) -> dict:
    """Image items with three choices each, and the log-probabilities any2text gives the choices."""
    items = _items("image")
    conversations = [
        visuals_conversation(item["question"] + CHOICE_INSTRUCTION, [Image.open(io.BytesIO(item["image"]["bytes"]))])
        for item in items
    ]
    scored = continuation_logprobs(
        model,
        processor,
        [c for c in conversations for _ in CHOICES],
        [" " + choice for _ in conversations for choice in CHOICES],
        batch_size=BATCH_SIZE,
    )
    logprobs = [[logprob for logprob, _ in scored[i : i + len(CHOICES)]] for i in range(0, len(scored), len(CHOICES))]
    rows = [{**item, "choices": CHOICES, "gold": int(np.argmax(row))} for item, row in zip(items, logprobs)]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "choices": datasets.List(datasets.Value("string")),
            "gold": datasets.Value("int64"),
        }
    )
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return {"logprobs": logprobs, "scored": scored}


def _run(command: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("lmms_eval_e2e")
    model, processor = load_inference_model(str(tiny_checkpoint), device="cpu")
    tasks = root / "tasks"
    tasks.mkdir()
    constants = f"INSTRUCTION = {INSTRUCTION!r}\nCHOICE_INSTRUCTION = {CHOICE_INSTRUCTION!r}\n"
    (tasks / "utils.py").write_text(constants + TASK_UTILS)
    expected = {}
    for kind, target in (("image", "!function utils.image_target"), ("audio", "answer")):
        items = _items(kind)
        answers = _oracle(model, processor, kind, items)
        labels = _write_data(root / f"{kind}.parquet", kind, items, answers)
        expected[kind] = {"answers": answers, "labels": labels}
        yaml = TASK_YAML.format(
            name=f"any2text_{kind}_qa",
            data=root / f"{kind}.parquet",
            target=target,
            max_new_tokens=MAX_NEW_TOKENS[kind],
        )
        (tasks / f"any2text_{kind}_qa.yaml").write_text(textwrap.dedent(yaml))
    expected["choice"] = _write_choice_data(root / "image_choice.parquet", model, processor)
    (tasks / "any2text_image_choice.yaml").write_text(CHOICE_YAML.format(data=root / "image_choice.parquet"))
    env = {
        **os.environ,
        "HF_HOME": str(root / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return root, tiny_checkpoint, env, expected


@pytest.fixture(scope="module")
def lmms_eval_run(workdir):
    """lmms-eval's CLI, as a user runs it, on both tasks; its results and per-sample logs."""
    root, checkpoint, env, _ = workdir
    output = root / "lmms_eval_out"
    command = [
        str(Path(sys.executable).parent / "lmms-eval"),  # the command pip installs, as a user types it
        "--model", "any2text",
        "--model_args", f"pretrained={checkpoint},device=cpu",
        "--tasks", "any2text_image_qa,any2text_audio_qa",
        "--include_path", str(root / "tasks"),
        "--batch_size", str(BATCH_SIZE),
        "--output_path", str(output),
        "--log_samples",
    ]  # fmt: skip
    log = _run(command, root, env)
    results_paths = list(output.rglob("*_results.json"))
    assert len(results_paths) == 1, f"lmms-eval wrote {results_paths}; its output:\n{log[-6000:]}"
    (results_path,) = results_paths
    samples = {}
    for kind in ("image", "audio"):
        (path,) = output.rglob(f"*_samples_any2text_{kind}_qa.jsonl")
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        # `filtered_resps`: the answer after the task's filters (none here), a string or a one-element list.
        responses = [r["filtered_resps"] for r in sorted(records, key=lambda r: r["doc_id"])]
        samples[kind] = [r[0] if isinstance(r, list) else r for r in responses]
    return json.loads(results_path.read_text())["results"], samples


def _any2text_eval(workdir, kind: str, benchmark: str) -> tuple[dict, list[dict]]:
    root, checkpoint, env, _ = workdir
    output = root / "any2text_out"
    command = [
        sys.executable, "-m", "any2text.cli", "eval",
        "--model", str(checkpoint),
        "--benchmark", benchmark,
        "--data", str(root / f"{kind}.parquet"),
        "--output_dir", str(output),
        "--batch_size", str(BATCH_SIZE),
        "--device", "cpu",
    ]  # fmt: skip
    _run(command, root, env)
    scores = json.loads((output / benchmark / "scores.json").read_text())
    predictions = [json.loads(line) for line in (output / benchmark / "predictions.jsonl").read_text().splitlines()]
    return scores, predictions


@pytest.mark.parametrize(
    ("kind", "benchmark", "score_key"), [("image", "vqav2", "accuracy"), ("audio", "clotho_aqa", "exact_match")]
)
def test_lmms_eval_scores_what_any2text_eval_scores(workdir, lmms_eval_run, kind, benchmark, score_key):
    expected = workdir[3][kind]
    results, samples = lmms_eval_run
    scores, predictions = _any2text_eval(workdir, kind, benchmark)

    # Same answers, item for item, as any2text's inference and `any2text eval`.
    assert samples[kind] == expected["answers"]
    assert [p["prediction"] for p in predictions] == expected["answers"]
    assert all(p["prompt"].endswith(INSTRUCTION) for p in predictions)

    lmms_score = results[f"any2text_{kind}_qa"]["exact_match,none"]
    hits = sum(label == answer for label, answer in zip(expected["labels"], expected["answers"]))
    assert hits >= 1  # the model's own answers are not all empty: the score can tell right from wrong
    assert len(set(expected["answers"])) > 1  # the answers depend on the medium, so a lost medium would show
    # Every reference of an item is the same (VQAv2's ten), so VQA accuracy is exact match here.
    assert scores["num_items"] == ITEMS
    assert scores["scores"][score_key] == pytest.approx(hits / ITEMS)
    assert lmms_score == pytest.approx(scores["scores"][score_key])


def test_loglikelihood_of_lmms_eval_requests(workdir, monkeypatch):
    """The simple model (`--force_simple`) scores the requests lmms-eval builds for a multiple-choice task with the
    log-probabilities any2text computes directly.

    Called through lmms-eval's Python API, not its CLI: lmms-eval 0.7.3's evaluator turns every model response that
    is not a string into one (`unwrap_generation_output` -> `str((logprob, is_greedy))`), after which its
    `multiple_choice` scoring fails on any model (`lls, is_greedy = zip(*results)`: too many values to unpack).
    """
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager, get_task_dict

    root, checkpoint, env, expected = workdir
    for key in ("HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, env[key])
    lm = get_model("any2text", force_simple=True).create_from_arg_string(
        f"pretrained={checkpoint},device=cpu", {"batch_size": BATCH_SIZE}
    )
    name = "any2text_image_choice"
    task = get_task_dict([name], TaskManager(include_path=str(root / "tasks")), "simple")[name]
    task.build_all_requests()
    lm.task_dict[name] = task.dataset
    requests = sorted(task.instances, key=lambda r: (r.doc_id, r.idx))
    assert [r.args[1] for r in requests[: len(CHOICES)]] == [" " + choice for choice in CHOICES]
    scored = lm.loglikelihood(requests)
    assert [logprob for logprob, _ in scored] == pytest.approx(sum(expected["choice"]["logprobs"], []), abs=1e-4)
    assert [greedy for _, greedy in scored] == [greedy for _, greedy in expected["choice"]["scored"]]
