"""`any2text chat --web` served for real on a tiny checkpoint and driven through `gradio_client` (as gradio's own tests
drive apps): text, image and audio turns stream, and the last output equals `any2text.inference`'s greedy answer; bad
media are answered in the chat."""

import socket
from pathlib import Path

import pytest

from any2text.evaluation import chat
from any2text.inference import load_inference_model
from test_chat import MAX_NEW_TOKENS, greedy, user, write_chat_media

gradio = pytest.importorskip("gradio", reason='the web chat needs gradio: pip install "any2text[web]"')
from gradio_client import Client, handle_file  # noqa: E402

from any2text.evaluation.web_chat import WebChat, launch_web_chat  # noqa: E402

SETTINGS = (MAX_NEW_TOKENS, 0.0, 1.0, 1.0)  # max_new_tokens, temperature (greedy), top_p, repetition_penalty


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return write_chat_media(tmp_path_factory.mktemp("web_chat_media"))


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    model, processor = load_inference_model(str(tiny_checkpoint), device="cpu")
    app = launch_web_chat(model, processor, port=None, prevent_thread_lock=True)
    try:
        yield app, model, processor
    finally:
        app.close()


def ask(client: Client, text: str, *files: Path) -> list[str]:
    """Every output the `/chat` endpoint streamed for one turn."""
    job = client.submit({"text": text, "files": [handle_file(str(f)) for f in files]}, *SETTINGS, api_name="/chat")
    job.result()
    return job.outputs()


def assert_streamed(outputs: list[str], expected: str) -> None:
    assert outputs[-1] == expected and expected
    assert len(set(outputs[:-1])) >= 2, f"the answer arrived in one piece, not streamed: {outputs}"
    assert all(len(partial) <= len(expected) for partial in outputs)


def test_page_is_local_with_no_share_link_and_no_telemetry(served):
    app, _, _ = served
    assert app.local_url.startswith("http://127.0.0.1:")
    assert not app.share and app.share_url is None and app.analytics_enabled is False


def test_text_turn_streams_greedy_answer(served):
    app, model, processor = served
    outputs = ask(Client(app.local_url, verbose=False), "Say something.")
    assert_streamed(outputs, greedy(model, processor, [user({"type": "text", "text": "Say something."})]))


def test_image_turn_then_follow_up_keeps_the_image(served, media):
    app, model, processor = served
    client = Client(app.local_url, verbose=False)
    first_turn = user({"type": "image", "image": str(media / "orange.png")}, {"type": "text", "text": "Colour?"})
    first = ask(client, "Colour?", media / "orange.png")
    assert_streamed(first, greedy(model, processor, [first_turn]))
    # The second turn is answered with the first turn's image and answer in context.
    follow_up = ask(client, "Are you sure?")
    conversation = [first_turn, {"role": "assistant", "content": [{"type": "text", "text": first[-1]}]},
                    user({"type": "text", "text": "Are you sure?"})]  # fmt: skip
    assert follow_up[-1] == greedy(model, processor, conversation)
    assert follow_up[-1] != greedy(model, processor, [user({"type": "text", "text": "Are you sure?"})])


def test_audio_turn_streams_greedy_answer(served, media):
    app, model, processor = served
    outputs = ask(Client(app.local_url, verbose=False), "What do you hear?", media / "beep.wav")
    turn = user({"type": "audio", "audio": str(media / "beep.wav")}, {"type": "text", "text": "What do you hear?"})
    assert_streamed(outputs, greedy(model, processor, [turn]))


def test_video_turn_streams_greedy_answer(served, media):
    pytest.importorskip("av", reason='video needs PyAV: pip install "any2text[video]"')
    app, model, processor = served
    outputs = ask(Client(app.local_url, verbose=False), "What colour at the end?", media / "moving.mp4")
    turn = user(
        {"type": "video", "video": str(media / "moving.mp4")}, {"type": "text", "text": "What colour at the end?"}
    )
    assert_streamed(outputs, greedy(model, processor, [turn]))
    assert outputs[-1] != greedy(model, processor, [user({"type": "text", "text": "What colour at the end?"})])


@pytest.mark.parametrize(
    "name, message",
    [
        ("notes.txt", "`notes.txt` is a `text/plain` file, not an image, audio clip or video. Send an image (PNG"),
        ("broken.png", "`broken.png` could not be read as image ("),
        ("clip.mp4", "`clip.mp4` could not be read as video ("),
    ],
)
def test_bad_media_are_answered_in_the_chat_and_left_out_of_the_context(served, media, name, message):
    app, model, processor = served
    client = Client(app.local_url, verbose=False)
    (answer,) = ask(client, "What is this?", media / name)
    assert answer.startswith(message) and "Traceback" not in answer
    # The conversation goes on; the bad turn (and the error shown for it) is not in the model's context.
    after = ask(client, "Hello?")
    assert after[-1] == greedy(model, processor, [user({"type": "text", "text": "Hello?"})])


def test_audio_for_an_image_only_model_is_refused_in_the_chat(tiny_llava_checkpoint, media):
    model, processor = load_inference_model(str(tiny_llava_checkpoint), device="cpu")
    web = WebChat(model, processor)
    assert web.accepted == ("image",)
    replies = list(web.respond({"text": "Hear this?", "files": [str(media / "beep.wav")]}, [], MAX_NEW_TOKENS))
    assert replies == ["This model does not take audio (it takes images); `beep.wav` was not sent."]
    # An image goes through the same path and streams the greedy answer.
    replies = list(web.respond({"text": "Colour?", "files": [str(media / "orange.png")]}, [], MAX_NEW_TOKENS))
    turn = user({"type": "image", "image": str(media / "orange.png")}, {"type": "text", "text": "Colour?"})
    assert replies[-1] == greedy(model, processor, [turn])


def test_page_history_format_is_read_with_its_media(tiny_checkpoint, media):
    """The page sends history as `{"type": "file", "file": {"path"}}` / `{"type": "text"}` parts (the API as bare
    `{"path"}` and strings); both give the same conversation."""
    model, processor = load_inference_model(str(tiny_checkpoint), device="cpu")
    web = WebChat(model, processor)
    image = str(media / "orange.png")
    page = [
        {"role": "user", "content": [{"type": "file", "file": {"path": image, "mime_type": "image/png"}},
                                     {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "orange"}]},
    ]  # fmt: skip
    api = [{"role": "user", "content": [{"path": image}, "Colour?"]}, {"role": "assistant", "content": "orange"}]
    from_page = web.conversation({"text": "Sure?", "files": []}, page)
    assert from_page == web.conversation({"text": "Sure?", "files": []}, api)
    assert [m["role"] for m in from_page] == ["user", "assistant", "user"]
    assert from_page[0]["content"][0]["type"] == "image" and from_page[0]["content"][0]["image"].size == (20, 20)


def test_taken_port_is_one_clear_line(tiny_checkpoint, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert chat.main(["--model", str(tiny_checkpoint), "--web", "--port", str(port), "--device", "cpu"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' progress bar
    assert last.startswith(f"any2text chat: cannot serve on 127.0.0.1:{port} (") and last.endswith("another --port.")
