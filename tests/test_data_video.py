"""Video through the data path: row formats -> messages, the decoder's named bad rows, lengths without decoding."""

import json

import av
import numpy as np
import pytest

from any2text.data.loading import DatasetSpec, MultimodalDataset
from any2text.data.media import VideoDecodeError, load_video, video_num_frames
from any2text.data.messages import media_refs
from any2text.data.preference import PreferenceMessages
from any2text.data.templates import get_template, user_message
from conftest import tiny_models


def write_video(path, num_frames: int = 6, size: int = 16, fps: int = 4):
    """A tiny mp4 whose frame `i` is a flat grey of level `30 * i` (so frame order can be read back)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 30 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_parts(messages):
    return media_refs(messages)["video"]


# ---------------------------------------------------------------------------------------------------------------------
# Row formats -> messages


def test_llava_video_row_reads_its_image_tag_as_the_video():
    row = {
        "id": "v1",
        "video": "NextQA/1.mp4",
        "conversations": [{"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "A ball."}],
    }
    for name in ("LLaVA-Video", "LLaVA"):
        messages = get_template(name)(row)
        assert messages[0]["content"] == [
            {"type": "video", "video": "NextQA/1.mp4"},
            {"type": "text", "text": "What happens?"},
        ]


def test_llava_row_with_video_placeholders_and_images_together():
    row = {
        "images": ["a.png"],
        "videos": ["b.mp4", "c.mp4"],
        "conversations": [
            {"from": "human", "value": "<image> then <video> and <video>?"},
            {"from": "gpt", "value": "Yes."},
        ],
    }
    content = get_template("LLaVA")(row)[0]["content"]
    assert [part["type"] for part in content] == ["image", "text", "video", "text", "video", "text"]
    assert video_parts(get_template("LLaVA")(row)) == ["b.mp4", "c.mp4"]


def test_llama_factory_rows_with_videos():
    row = {
        "messages": [
            {"role": "user", "content": "<video>Which way does it move?"},
            {"role": "assistant", "content": "Left."},
        ],
        "videos": ["mllm_demo_data/1.mp4"],
    }
    messages = get_template("LLaMA-Factory")(row)
    assert messages[0]["content"] == [
        {"type": "video", "video": "mllm_demo_data/1.mp4"},
        {"type": "text", "text": "Which way does it move?"},
    ]
    assert messages[1] == {"role": "assistant", "content": [{"type": "text", "text": "Left."}]}


def test_llava_video_count_mismatch_names_the_row():
    row = {
        "id": "x",
        "videos": ["b.mp4"],
        "conversations": [{"from": "human", "value": "<video> <video>"}, {"from": "gpt", "value": "ok"}],
    }
    with pytest.raises(ValueError, match=r"row `id=x` has 2 `<video>` placeholder\(s\) but 1 video"):
        get_template("LLaVA")(row)


def test_llava_video_template_requires_a_video_column():
    assert get_template("LLaVA-Video").missing_columns(["conversations"]) == ["video|videos"]
    assert get_template("LLaVA-Video").missing_columns(["conversations", "videos"]) == []


def test_user_message_takes_videos_by_column_name():
    message = user_message("Why?", videos=["v.mp4"], images=["i.png"])
    assert [part["type"] for part in message["content"]] == ["image", "video", "text"]


def test_align_anything_tv2t_pair():
    row = {
        "prompt": "<video> Which way does the square move?",
        "video_path": "clips/1.mp4",
        "response_1": "Left.",
        "response_2": "Right.",
        "overall_response": 2,
    }
    pair = get_template("AA_TV2T")(row)
    assert isinstance(pair, PreferenceMessages)
    assert pair.prompt[0]["content"][0] == {"type": "video", "video": "clips/1.mp4"}
    assert pair.chosen[0]["content"][0]["text"] == "Right." and pair.rejected[0]["content"][0]["text"] == "Left."
    assert get_template("align-anything-text-video-to-text").name == "AA_TV2T"
    with pytest.raises(ValueError, match="no `video_path`"):
        get_template("AA_TV2T")({**row, "video_path": None})


def test_trl_preference_videos_fill_video_parts_in_order():
    row = {
        "videos": ["a.mp4", "b.mp4"],
        "prompt": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "vs"}, {"type": "video"}]}
        ],
        "chosen": "Same.",
        "rejected": "Different.",
    }
    pair = get_template("TRL-Preference")(row)
    assert video_parts(pair.prompt) == ["a.mp4", "b.mp4"]
    # A string prompt places them at `<video>`, or first when it has none.
    pair = get_template("TRL-Preference")({**row, "prompt": "Compare <video> with <video>."})
    assert [part["type"] for part in pair.prompt[0]["content"]] == ["text", "video", "text", "video", "text"]
    pair = get_template("TRL-Preference")({**row, "videos": ["a.mp4"], "prompt": "What is it?"})
    assert pair.prompt[0]["content"][0] == {"type": "video", "video": "a.mp4"}


# ---------------------------------------------------------------------------------------------------------------------
# The decoder: the processor's `load_video`, errors as named bad rows


def test_load_video_samples_as_the_processor_says(tmp_path):
    path = write_video(tmp_path / "six.mp4", num_frames=6)
    frames = load_video(str(path), num_frames=3)
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
    # Uniform sampling `arange(3) * 6 // 3` = frames 0, 2, 4: their grey levels rise in order.
    levels = frames.reshape(3, -1).mean(-1)
    np.testing.assert_allclose(levels, [0, 60, 120], atol=12)
    # A relative path resolves against the media root, as for images and audio.
    assert load_video("six.mp4", tmp_path, num_frames=3).shape == frames.shape


def test_video_frames_counted_without_decoding(tmp_path):
    path = write_video(tmp_path / "six.mp4", num_frames=6, fps=4)
    assert video_num_frames(str(path), num_frames=4) == 4
    # Under `fps` the container's metadata decide (6 frames at 4 fps, sampled at 2 fps: 3 frames) and the decoder
    # gives exactly that many.
    assert video_num_frames(str(path), fps=2) == 3 == len(load_video(str(path), fps=2))


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda path: path.write_bytes(b"not a video at all" * 10), "undecodable_media"),
        (lambda path: write_video(path, num_frames=2), "too_short_media"),
    ],
    ids=["corrupt", "too_short"],
)
def test_bad_videos_raise_named_errors(tmp_path, make, cause):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(VideoDecodeError) as error:
        load_video(str(path), num_frames=4)
    assert error.value.cause == cause
    assert "bad.mp4" in str(error.value)


def test_missing_video_is_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        load_video("gone.mp4", tmp_path, num_frames=4)


def test_bad_video_rows_are_skipped_and_counted(tmp_path):
    write_video(tmp_path / "good.mp4", num_frames=6)
    write_video(tmp_path / "short.mp4", num_frames=2)
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00" * 200)
    rows = [
        {"id": name, "video": f"{name}.mp4", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Grey."}]}
        for name in ("good", "missing", "short", "corrupt")
    ]  # fmt: skip
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    spec = DatasetSpec(str(tmp_path / "rows.json"), "LLaVA-Video")
    with pytest.raises(ValueError, match=r"Row 1 of dataset .*id `missing`"):
        [MultimodalDataset(spec, media_options={"num_frames": 4})[i] for i in range(4)]
    dataset = MultimodalDataset(spec, media_options={"num_frames": 4}, skip_bad_rows=True, max_bad_rows=3)
    items = [dataset[i] for i in range(len(dataset))]
    assert all(item["source"]["id"] == "good" for item in items)
    assert video_parts(items[0]["messages"])[0].shape == (4, 16, 16, 3)
    causes = {row.id: row.cause for row in dataset.bad_rows.rows.values()}
    assert causes == {"missing": "missing_media", "short": "too_short_media", "corrupt": "undecodable_media"}


# ---------------------------------------------------------------------------------------------------------------------
# Every row format reaches the collators with the right token counts


def video_processor(num_frames=4, fps=None):
    processor = tiny_models().get_cheap_processor()
    processor.num_frames, processor.fps = num_frames, fps
    return processor


def video_tokens(processor, input_ids):
    return int((input_ids == processor.tokenizer.convert_tokens_to_ids("<video>")).sum())


def write_rows(folder, name, rows):
    path = folder / f"{name}.json"
    path.write_text(json.dumps(rows))
    return DatasetSpec(str(path), name)


def sft_rows(folder):
    """Two SFT datasets with videos: LLaVA-Video-178K's form (`<image>` for the video) and LLaVA with `<video>`."""
    turn = {"from": "gpt", "value": "Grey."}
    return [
        write_rows(folder, "LLaVA-Video", [
            {"id": "a", "video": "six.mp4", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, turn]}]),
        write_rows(folder, "LLaVA", [
            {"id": "b", "videos": ["six.mp4", "eight.mp4"],
             "conversations": [{"from": "human", "value": "<video> or <video>?"}, turn]}]),
    ]  # fmt: skip


def pair_rows_of(folder):
    return [
        write_rows(folder, "AA_TV2T", [{"prompt": "<video> Which way?", "video_path": "six.mp4",
                                        "response_1": "Left.", "response_2": "Right.", "overall_response": 1}]),
        write_rows(folder, "TRL-Preference", [{"videos": ["eight.mp4"], "prompt": [{"role": "user", "content": [
            {"type": "video"}, {"type": "text", "text": "Which way?"}]}], "chosen": "Up.", "rejected": "Down."}]),
    ]  # fmt: skip


@pytest.fixture
def clips(tmp_path):
    write_video(tmp_path / "six.mp4", num_frames=6)
    write_video(tmp_path / "eight.mp4", num_frames=8)
    return tmp_path


@pytest.mark.parametrize(("num_frames", "fps"), [(4, None), (None, 2)], ids=["num_frames", "fps"])
def test_sft_video_rows_reach_the_collator_with_their_token_counts(clips, num_frames, fps):
    from any2text.data.collator import MultimodalCollator
    from any2text.modalities import media_options

    processor = video_processor(num_frames, fps)
    collator = MultimodalCollator(processor)
    # Frames each video becomes: 4 under `num_frames=4`; 6 and 8 frames at 4 fps sampled at 2 fps: 3 and 4.
    frames = {"a": [4], "b": [4, 4]} if fps is None else {"a": [3], "b": [3, 4]}
    for spec in sft_rows(clips):
        dataset = MultimodalDataset(spec, media_options=media_options(processor))
        lengths = dataset.validate(length_fn=collator.sample_length)  # the length index, no video decoded
        item = dataset[0]
        batch = collator([item])
        expected = frames[item["source"]["id"]]
        assert batch["pixel_values_videos"].shape[:-3].numel() == sum(expected)  # frames, in either layout
        assert video_tokens(processor, batch["input_ids"]) == sum(expected) * processor.video_frame_seq_length
        assert lengths == [batch["input_ids"].shape[1]]


@pytest.mark.parametrize(("num_frames", "fps"), [(4, None), (None, 2)], ids=["num_frames", "fps"])
def test_video_prompt_rows_are_checked_and_measured_as_sft_rows_are(clips, monkeypatch, num_frames, fps):
    """Prompt rows go through the SFT dataset's one row path: paths resolved against the media root before
    `check_sample` reads a file's frame count under `fps` (from another working directory), then decoded."""
    from any2text.data.prompts import PromptCollator, PromptDataset
    from any2text.modalities import media_options

    monkeypatch.chdir(clips.parent)  # the rows' relative paths name files under the dataset's folder only
    processor = video_processor(num_frames, fps)
    collator = PromptCollator(processor)
    specs = [
        write_rows(clips, "TRL-Prompt", [{"id": "p", "prompt": "<video>Which way?", "videos": ["eight.mp4"]}]),
        sft_rows(clips)[0],  # an SFT row: the conversation before its answer is the prompt
    ]
    frames = {"p": 4, "a": 4} if fps is None else {"p": 4, "a": 3}
    for spec in specs:
        dataset = PromptDataset(
            spec, media_options=media_options(processor), check_sample=collator.check_sample, validate_rows=True
        )
        assert dataset.num_skipped == 0
        lengths = dataset.validate(length_fn=collator.sample_length)
        item = dataset[0]
        batch = collator([item])
        assert video_tokens(processor, batch["input_ids"]) == frames[item["source"]["id"]] * (
            processor.video_frame_seq_length
        )
        assert lengths == [batch["input_ids"].shape[1]]


def test_video_pairs_reach_the_pair_collator_encoded_once(clips):
    from any2text.data.preference import PreferenceCollator, PreferenceDataset
    from any2text.modalities import media_options

    processor = video_processor(num_frames=4)
    collator = PreferenceCollator(processor)
    for spec in pair_rows_of(clips):
        dataset = PreferenceDataset(spec, media_options=media_options(processor))
        lengths = dataset.validate(length_fn=collator.sample_length)
        batch = collator([dataset[0]])
        # The pair's video is in its prompt once: 4 frames, their tokens once, for both answers.
        assert batch["pixel_values_videos"].shape[:-3].numel() == 4
        assert video_tokens(processor, batch["input_ids"]) == 4 * processor.video_frame_seq_length
        assert lengths == [int((batch["position_ids"][0] > 0).sum()) + 1]
