"""The terminal chat (`any2text chat`): media are checked before the model loads, a bad one is one clear line on
stderr (no traceback, nothing about datasets), and good ones are answered like `any2text.inference` answers."""

from pathlib import Path

import pytest
import soundfile

from any2text.evaluation import chat
from any2text.inference import generate_batch, load_inference_model
from conftest import make_image, make_tone

MAX_NEW_TOKENS = 12


def write_chat_media(folder: Path) -> Path:
    """Good and bad media for the chats: an image, a 16 kHz clip, text, a broken PNG, a "video", a folder."""
    make_image("orange").save(folder / "orange.png")
    soundfile.write(folder / "beep.wav", make_tone(500.0, 1.0, 16000), 16000)
    (folder / "notes.txt").write_text("not a medium")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "clip.mp4").write_bytes(b"\x00" * 64)
    (folder / "a_folder.png").mkdir()
    return folder


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return write_chat_media(tmp_path_factory.mktemp("chat_media"))


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
