"""Serve one checkpoint with vLLM's offline engine and print, for each prompt, its prompt and output token ids.

`test_vllm_serving.py` runs this in a subprocess with a timeout: a crash inside the model can leave vLLM's
in-process engine spinning instead of exiting. One engine serves all prompts of a checkpoint (starting one takes
most of a minute); each prompt is generated on its own and reports its own result or error. Usage:

    python tests/vllm_e2e/vllm_case.py RUN.json

RUN.json: {"model": DIR, "model_impl": "transformers" | "auto", "max_model_len": INT, "max_tokens": INT,
"prompts": [{"name": STR, "prompt": TEXT, "image": PNG | null, "audio": NPY | null, "sampling_rate": INT | null,
"video": NPY | null}],
"torchvision_path": DIR | null}
Each result is one line: `VLLM_RESULT {"name": ..., "prompt_token_ids": [...], "token_ids": [...]}` or, when that
prompt failed, `{"name": ..., "error": "..."}`.
"""

import json
import os
import sys
import traceback

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine runs in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the tiny models need next to nothing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULT_PREFIX = "VLLM_RESULT "


def _media(case: dict) -> dict:
    import numpy as np
    from PIL import Image

    media = {}
    if case.get("image"):
        media["image"] = Image.open(case["image"]).convert("RGB")
    if case.get("audio"):
        media["audio"] = (np.load(case["audio"]), case["sampling_rate"])
    if case.get("video"):
        media["video"] = np.load(case["video"])  # uint8 frames (T, H, W, 3)
    return media


def _use_torchvision(path: str) -> None:
    """Make the torchvision under `path` importable here and in vLLM's helper processes (native Llava needs it).

    It is kept out of the venv so that the Transformers-backend runs see no torchvision, as on a machine without
    one; see guard_torchvision_ops.py for why this machine's copy needs a guard.
    """
    sys.path.insert(0, path)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)


def main(run_path: str) -> None:
    run = json.loads(open(run_path).read())
    if run.get("torchvision_path"):
        _use_torchvision(run["torchvision_path"])
    from vllm import LLM, SamplingParams

    modalities = {m for case in run["prompts"] for m in ("image", "audio", "video") if case.get(m)}
    llm = LLM(
        model=run["model"],
        model_impl=run["model_impl"],
        trust_remote_code=True,
        dtype="float32",
        max_model_len=run["max_model_len"],
        max_num_seqs=1,
        enforce_eager=True,
        # No processor kwargs: vLLM resamples clips to the feature extractor's rate and calls the processor without
        # a rate, which the processor then assumes (as transformers' audio processors do).
        limit_mm_per_prompt={modality: 1 for modality in sorted(modalities)},
        seed=0,
    )
    # Greedy, and the full length whatever the model emits: the tokens are compared with transformers' greedy ones.
    params = SamplingParams(max_tokens=run["max_tokens"], temperature=0.0, ignore_eos=True)
    for case in run["prompts"]:
        try:
            prompt = {"prompt": case["prompt"]}
            if media := _media(case):
                prompt["multi_modal_data"] = media
            (output,) = llm.generate(prompt, params, use_tqdm=False)
            result = {
                "prompt_token_ids": list(output.prompt_token_ids),
                "token_ids": list(output.outputs[0].token_ids),
            }
        except Exception:  # reported per prompt; the test shows it
            result = {"error": traceback.format_exc()}
        print(RESULT_PREFIX + json.dumps({"name": case["name"], **result}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
