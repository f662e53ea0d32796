"""Make a torchvision whose C++ ops cannot load importable, as upstream's fix does; used by `make test-vllm`.

vLLM's native Llava imports torchvision (through transformers' Pixtral image processor). The only torchvision wheel
for torch 2.13 on this machine's index is CUDA-linked, so its C++ ops cannot load on the CPU-only torch, and
`import torchvision` then fails with "operator torchvision::nms does not exist": `_meta_registrations.py` registers
fake kernels for `nms` / `qnms` without checking that the ops loaded (https://github.com/pytorch/vision/issues/9337;
the fix, https://github.com/pytorch/vision/pull/9649, guards them with `torchvision.extension._has_ops()`).
This applies that guard to the copy installed under `build/` for the vLLM tests only (never to a user's install):

    python tests/vllm_e2e/guard_torchvision_ops.py build/vllm-torchvision/torchvision
"""

import sys
from pathlib import Path

GUARD = "if torchvision.extension._has_ops() else (lambda fn: fn))"


def main(package_dir: str) -> None:
    path = Path(package_dir) / "_meta_registrations.py"
    source = path.read_text()
    if GUARD in source:
        return
    for op in ("nms", "qnms"):
        decorator = f'@torch.library.register_fake("torchvision::{op}")'
        if decorator not in source:
            raise SystemExit(f"{path}: `{decorator}` not found; this torchvision needs no guard or another one.")
        source = source.replace(decorator, f'@(torch.library.register_fake("torchvision::{op}") {GUARD}')
    path.write_text(source)


if __name__ == "__main__":
    main(sys.argv[1])
