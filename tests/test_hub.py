"""Uploading built checkpoints to the Hub, against a local fake Hub endpoint.

This is a CLIENT-SIDE test: a tiny HTTP server implements only the endpoints huggingface_hub calls to create a repo
and commit files (create, validate-yaml, preupload, commit), answers every file as a "regular" (non-LFS) upload and records the
requests. It checks what any2text and transformers send; it does not prove the real Hub accepts it.
"""

import base64
import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from builders_fixtures import parts  # noqa: F401


class FakeHub(BaseHTTPRequestHandler):
    requests: list = []
    commits: list = []

    def log_message(self, *args):
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.requests.append(("GET", self.path))
        self._reply(404, {"error": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        self.requests.append(("POST", path))
        if path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
            return self._reply(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":  # the model card's YAML header is checked before the commit
            return self._reply(200, {"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._reply(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if "/commit/" in path:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            files = {
                line["value"]["path"]: base64.b64decode(line["value"]["content"])
                for line in lines
                if line["key"] == "file"
            }
            self.commits.append({"path": path, "header": lines[0]["value"], "files": files})
            repo_id = path.split("/")[3] + "/" + path.split("/")[4]
            url = f"http://{self.headers['Host']}/{repo_id}/commit/{'0' * 40}"
            return self._reply(200, {"commitUrl": url, "commitOid": "0" * 40})
        return self._reply(404, {"error": f"unexpected {path}"})


@pytest.fixture()
def fake_hub():
    FakeHub.requests, FakeHub.commits = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_build_push_to_hub_uploads_one_commit_with_code_and_card(parts, fake_hub, tmp_path):  # noqa: F811
    """`build_llama_vision_audio(push_to_hub=...)` and transformers' own `model/processor.push_to_hub`."""
    script = f"""
        import any2text
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from any2text.builders import build_llama_vision_audio, enable_remote_code
        build_llama_vision_audio({str(parts.llama)!r}, {str(parts.clip)!r}, {str(parts.clap)!r},
                                 save_path="built", push_to_hub="me/tiny-lva")
        model = AutoModelForImageTextToText.from_pretrained("built")
        processor = AutoProcessor.from_pretrained("built")
        enable_remote_code()  # transformers' own push_to_hub then ships the code too
        model.push_to_hub("me/tiny-lva-2")
        processor.push_to_hub("me/tiny-lva-2")
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": fake_hub, "HF_TOKEN": "hf_fake"}
    env.update(HF_HUB_DISABLE_XET="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    posts = [path for method, path in FakeHub.requests if method == "POST"]
    # Each upload: create the repo, validate the card's YAML, ask how to upload each file, commit. Three uploads:
    # the builder's one commit, then transformers' model.push_to_hub and processor.push_to_hub.
    create, yaml = "/api/repos/create", "/api/validate-yaml"
    first, second = "/api/models/me/tiny-lva", "/api/models/me/tiny-lva-2"
    assert posts == [create, yaml, yaml, f"{first}/preupload/main", f"{first}/commit/main"] + 2 * [
        create,
        yaml,
        f"{second}/preupload/main",
        f"{second}/commit/main",
    ]
    built, model_commit, processor_commit = FakeHub.commits
    # The builder: one commit holding everything save_checkpoint wrote, model card included.
    assert set(built["files"]) == {p.name for p in (tmp_path / "built").iterdir()}
    assert {"README.md", "model.safetensors", "modeling_llama_vision_audio.py", "processor_config.json"} <= set(
        built["files"]
    )
    config = json.loads(built["files"]["config.json"])
    assert config["auto_map"]["AutoConfig"] == "configuration_llama_vision_audio.LlamaVisionAudioConfig"
    assert b"tiny_lva" not in built["files"]["README.md"] and b"`<image>`" in built["files"]["README.md"]
    # transformers' push_to_hub of a loaded model and processor: the same code files and auto_map travel along.
    assert model_commit["path"] == processor_commit["path"] == "/api/models/me/tiny-lva-2/commit/main"
    assert {"config.json", "model.safetensors", "configuration_llama_vision_audio.py"} <= set(model_commit["files"])
    assert "modeling_llama_vision_audio.py" in model_commit["files"]
    assert json.loads(model_commit["files"]["config.json"])["auto_map"] == config["auto_map"]
    assert {"processor_config.json", "processing_llama_vision_audio.py"} <= set(processor_commit["files"])
    processor_config = json.loads(processor_commit["files"]["processor_config.json"])
    assert processor_config["auto_map"]["AutoProcessor"].startswith("processing_llama_vision_audio.")
