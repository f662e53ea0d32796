"""The terminal chat (`any2text chat`): media are checked before the model loads, a bad one is one clear line on
stderr (no traceback, nothing about datasets), and good ones are answered like `any2text.inference` answers."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import soundfile
from PIL import Image

from any2text.evaluation import chat
from any2text.inference import generate_batch, load_inference_model
from conftest import make_image, make_tone

MAX_NEW_TOKENS = 12


def write_chat_media(folder: Path) -> Path:
    """Good and bad media for the chats: an image, a 16 kHz clip, an 8-frame mp4 and the same frames as a folder of
    PNGs, text, a broken PNG, a broken "video", a folder."""
    make_image("orange").save(folder / "orange.png")
    soundfile.write(folder / "beep.wav", make_tone(500.0, 1.0, 16000), 16000)
    (folder / "notes.txt").write_text("not a medium")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "clip.mp4").write_bytes(b"\x00" * 64)
    (folder / "a_folder.png").mkdir()
    if importlib.util.find_spec("av") is not None:
        from any2text.demo.synthetic_video import encode_mp4, make_video

        frames = make_video("red", "blue", image_size=16)
        (folder / "moving.mp4").write_bytes(encode_mp4(frames))
        (folder / "frames").mkdir()
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / "frames" / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return write_chat_media(tmp_path_factory.mktemp("chat_media"))


@pytest.fixture(scope="module")
def no_video_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint as one built before video: no `video_token_id`."""
    path = tmp_path_factory.mktemp("no_video") / "lva"
    shutil.copytree(tiny_checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "video_token_id": None}))
    return path


def greedy(model, processor, conversation) -> str:
    return generate_batch(model, processor, [conversation], max_new_tokens=MAX_NEW_TOKENS)[0]


def user(*content) -> dict:
    return {"role": "user", "content": list(content)}


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the media were checked")

    monkeypatch.setattr(chat, "load_inference_model", refuse)


@pytest.mark.parametrize(
    "flag, name, message",
    [
        ("--image", "a_folder.png", "`{path}` is a folder; pass an image file."),
        ("--image", "missing.png", "`{path}` does not exist; check the path."),
        ("--image", "broken.png", "`{path}` could not be read as image ("),
        ("--audio", "notes.txt", "`{path}` could not be read as audio ("),
    ],
)
def test_terminal_chat_reports_bad_media_before_loading_the_model(
    tiny_checkpoint, media, capsys, no_model_load, flag, name, message
):
    path = str(media / name)
    assert chat.main(["--model", str(tiny_checkpoint), flag, path, "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("any2text chat: " + message.format(path=path))
    assert "media_root" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_terminal_chat_names_the_current_folder_for_a_relative_path(tiny_checkpoint, media, capsys, monkeypatch):
    monkeypatch.chdir(media)
    assert chat.main(["--model", str(tiny_checkpoint), "--image", "nope.png"]) == 2
    assert f"`nope.png` does not exist (a relative path is read from the current folder, {media})" in (
        capsys.readouterr().err
    )


def test_terminal_chat_refuses_audio_for_an_image_only_model(tiny_llava_checkpoint, media, capsys, no_model_load):
    path = str(media / "beep.wav")
    assert chat.main(["--model", str(tiny_llava_checkpoint), "--audio", path]) == 2
    assert capsys.readouterr().err == f"any2text chat: This model does not take audio (it takes images); `{path}` was not sent.\n"  # fmt: skip


def test_web_flag_refuses_command_line_media(tiny_checkpoint, media, capsys, no_model_load):
    assert chat.main(["--model", str(tiny_checkpoint), "--web", "--image", str(media / "orange.png")]) == 2
    assert "--image cannot go with --web; attach media in the page." in capsys.readouterr().err


def test_terminal_chat_reads_good_media_once_checked(tiny_checkpoint, media, capsys):
    image = media / "orange.png"
    assert chat.main(["--model", str(tiny_checkpoint), "--image", str(image), "--prompt", "Colour?",
                      "--max_new_tokens", str(MAX_NEW_TOKENS)]) == 0  # fmt: skip
    model, processor = load_inference_model(str(tiny_checkpoint), device="cpu")
    turn = user({"type": "image", "image": str(image)}, {"type": "text", "text": "Colour?"})
    assert capsys.readouterr().out.strip() == greedy(model, processor, [turn])


@pytest.mark.parametrize(
    "name, message",
    [
        ("clip.mp4", "`{path}` could not be read as video ("),
        ("missing.mp4", "`{path}` does not exist; check the path."),
    ],
)
def test_terminal_chat_reports_a_bad_video_before_loading_the_model(
    tiny_checkpoint, media, capsys, no_model_load, name, message
):
    path = str(media / name)
    assert chat.main(["--model", str(tiny_checkpoint), "--video", path, "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("any2text chat: " + message.format(path=path)) and len(err.strip().splitlines()) == 1


def test_terminal_chat_refuses_video_for_a_checkpoint_without_it(no_video_checkpoint, media, capsys, no_model_load):
    path = str(media / "moving.mp4")
    assert chat.main(["--model", str(no_video_checkpoint), "--video", path]) == 2
    assert capsys.readouterr().err == (
        f"any2text chat: This model does not take video (it takes images and audio); `{path}` was not sent.\n"
    )


def test_terminal_chat_refuses_video_for_an_image_only_model(tiny_llava_checkpoint, media, capsys, no_model_load):
    path = str(media / "clip.mp4")
    assert chat.main(["--model", str(tiny_llava_checkpoint), "--video", path]) == 2
    assert capsys.readouterr().err == f"any2text chat: This model does not take video (it takes images); `{path}` was not sent.\n"  # fmt: skip


@pytest.mark.parametrize("name", ["moving.mp4", "frames"])
def test_terminal_chat_answers_about_a_video_file_or_a_folder_of_frames(tiny_checkpoint, media, capsys, name):
    pytest.importorskip("av", reason='video needs PyAV: pip install "any2text[video]"')
    video = media / name
    assert chat.main(["--model", str(tiny_checkpoint), "--video", str(video), "--prompt", "What colour at the end?",
                      "--max_new_tokens", str(MAX_NEW_TOKENS), "--device", "cpu"]) == 0  # fmt: skip
    model, processor = load_inference_model(str(tiny_checkpoint), device="cpu")
    turn = user({"type": "video", "video": str(video)}, {"type": "text", "text": "What colour at the end?"})
    answer = capsys.readouterr().out.strip()
    assert answer == greedy(model, processor, [turn])
    # The frames reached the model: without them the answer differs.
    assert answer != greedy(model, processor, [user({"type": "text", "text": "What colour at the end?"})])
