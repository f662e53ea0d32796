"""`any2text chat --web` in a real browser: Debian's chromium, headless, driven by Playwright (which downloads nothing:
`executable_path` is the system browser). Run by `make test-browser`.

The page serves the demo's trained tiny model (`any2text demo --dpo_pairs 0 --reward_pairs 0 --grpo_prompts 0`, trained once
into build/web-chat-demo and reused), started with the real command line. The test uploads one of the demo's pictures,
asks its colour, waits for the streamed answer, asks where the shape is (the picture is in the history), checks both answers against
`any2text.inference`'s greedy generation, and saves the screenshot the README shows (docs/web_chat.png).
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from any2text.demo.synthetic import make_image
from any2text.inference import generate_batch, load_inference_model

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# integrations.md: a quiet headless Chromium that talks to nothing but the page.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
DEMO = REPO / "build" / "web-chat-demo"
SCREENSHOT = REPO / "docs" / "web_chat.png"
START_TIMEOUT_S = 300  # importing gradio and loading the model; minutes on a busy 2-core machine
ANSWER_TIMEOUT_MS = 120_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """The demo's stage-2 model (trained here once, about 3 minutes on 2 cores; reused while build/ stays)."""
    if not (DEMO / "stage2" / "config.json").exists():
        command = [
            sys.executable,
            "-m",
            "any2text.cli",
            "demo",
            "--output_dir",
            str(DEMO),
            "--dpo_pairs",
            "0",
            "--reward_pairs",
            "0",
            "--grpo_prompts",
            "0",
        ]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return DEMO / "stage2"


@pytest.fixture(scope="module")
def page_url(checkpoint, tmp_path_factory):
    """`any2text chat --model ckpt --web --port P` running; its URL once it answers."""
    port = free_port()
    log = tmp_path_factory.mktemp("web_chat") / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "any2text.cli", "chat", "--model", os.path.relpath(checkpoint, REPO), "--web", "--port", str(port),
             "--device", "cpu"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, f"the web chat exited with {server.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no page after {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}"
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_image_question_in_the_browser_streams_the_greedy_answer(checkpoint, page_url, tmp_path):
    image = tmp_path / "red_circle.png"
    make_image("red", "circle", "left", image_size=32).save(image)
    first = {"role": "user", "content": [{"type": "image", "image": str(image)},
                                         {"type": "text", "text": "What colour is the shape?"}]}  # fmt: skip
    model, processor = load_inference_model(str(checkpoint), device="cpu")
    expected_first = generate_batch(model, processor, [[first]], max_new_tokens=256)[0]
    follow_up = [first, {"role": "assistant", "content": [{"type": "text", "text": expected_first}]},
                 {"role": "user", "content": [{"type": "text", "text": "Is the shape on the left or on the right?"}]}]  # fmt: skip
    expected_second = generate_batch(model, processor, [follow_up], max_new_tokens=256)[0]

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1000, "height": 820},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(page_url)
            textbox = page.get_by_test_id("textbox")
            expect(textbox).to_be_visible(timeout=60_000)
            page.get_by_test_id("file-upload").set_input_files(str(image))
            textbox.fill("What colour is the shape?")
            textbox.press("Enter")
            answers = page.get_by_test_id("bot")
            expect(answers.nth(0)).to_have_text(expected_first, timeout=ANSWER_TIMEOUT_MS)
            expect(page.get_by_test_id("user").first).to_have_attribute("aria-label", "user's message: a component of type image")  # fmt: skip
            expect(textbox).to_be_editable(timeout=ANSWER_TIMEOUT_MS)  # the turn is over
            textbox.fill("Is the shape on the left or on the right?")
            textbox.press("Enter")
            expect(answers.nth(1)).to_have_text(expected_second, timeout=ANSWER_TIMEOUT_MS)
            expect(textbox).to_be_editable(timeout=ANSWER_TIMEOUT_MS)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
