"""Video through evaluation end to end on a tiny checkpoint: the MVBench-format benchmark reads real mp4 files through
the one runner and scores the letters; `pipeline("image-text-to-text")` answers a video turn as `generate_batch` does."""

import json
from pathlib import Path

import pytest

from any2text.evaluation.evaluate import main as eval_main
from any2text.inference import generate_batch, load_inference_model

pytest.importorskip("av", reason='video needs PyAV: pip install "any2text[video]"')

from any2text.demo.synthetic_video import generate_video_data  # noqa: E402


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("videos")
    generate_video_data(out, n_train=1, n_test=6, seed=0, image_size=16)
    return out


def _greedy(model, processor, video: Path, text: str, max_new_tokens: int) -> str:
    turn = {"role": "user", "content": [{"type": "video", "video": str(video)}, {"type": "text", "text": text}]}
    return generate_batch(model, processor, [[turn]], max_new_tokens=max_new_tokens)[0]


def test_mvbench_rows_with_mp4_files_run_through_the_runner(tiny_checkpoint, videos, tmp_path):
    out = tmp_path / "eval"
    argv = ["--model", str(tiny_checkpoint), "--benchmark", "mvbench", "--data", str(videos / "test_mvbench.json"),
            "--output_dir", str(out), "--batch_size", "4", "--max_new_tokens", "3", "--device", "cpu"]  # fmt: skip
    assert eval_main(argv)["num_items"] == 6
    records = [json.loads(line) for line in (out / "mvbench/predictions.jsonl").read_text().splitlines()]
    rows = json.loads((videos / "test_mvbench.json").read_text())
    assert [r["id"] for r in records] == [str(i) for i in range(6)]
    # Each prediction is the checkpoint's greedy answer to the video and the MVBench prompt (relative paths were
    # read from the data file's folder), and the reference is the letter of the right candidate.
    model, processor = load_inference_model(str(tiny_checkpoint), device="cpu")
    for record, row in zip(records, rows):
        assert record["prediction"] == _greedy(model, processor, videos / row["video"], record["prompt"], 3)
        assert record["references"] == ["ABCD"[row["candidates"].index(row["answer"])]]
    # ... and not the answer to the question alone: the video is in the prompt.
    assert any(r["prediction"] != generate_batch(model, processor, [[{"role": "user", "content": [
        {"type": "text", "text": r["prompt"]}]}]], max_new_tokens=3)[0] for r in records)  # fmt: skip
    scores = json.loads((out / "mvbench/scores.json").read_text())["scores"]
    from any2text.evaluation.metrics.mmbench.mmbench import extract_choice

    right = [extract_choice(r["prediction"], r["meta"]["choices"]) == r["references"][0] for r in records]
    assert scores["accuracy"] == pytest.approx(sum(right) / len(right))


def test_image_text_to_text_pipeline_answers_a_video_turn(tiny_checkpoint, videos):
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=str(tiny_checkpoint), device="cpu")
    video = videos / "videos/test-000000.mp4"
    messages = [{"role": "user", "content": [{"type": "video", "video": str(video)},
                                             {"type": "text", "text": "What colour at the end?"}]}]  # fmt: skip
    out = pipe(text=messages, max_new_tokens=5, return_full_text=False)
    assert out[0]["generated_text"].strip() == _greedy(pipe.model, pipe.processor, video, "What colour at the end?", 5)
