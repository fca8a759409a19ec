"""Make PyPI's torchvision import beside the CPU build of torch in the vLLM environment (run by ``run.sh``).

PyPI's torchvision wheel for x86_64 is linked against the CUDA build of torch, so next to ``torch==X+cpu`` its
compiled ops do not load, and ``torchvision/_meta_registrations.py`` then fails at import: it registers fake
kernels for ``torchvision::nms`` and ``torchvision::qnms``, operators that only the compiled ops define. vLLM needs
torchvision only for its image transforms (pure Python), so the two registrations are made conditional on the ops
having loaded. Idempotent; a torchvision that imports already is left alone.
"""

import importlib.util
import sys
from pathlib import Path

OPS = ("torchvision::nms", "torchvision::qnms")


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("vllm_cpu_fixups: torchvision is not installed; nothing to do")
        return 0
    path = Path(next(iter(spec.submodule_search_locations))) / "_meta_registrations.py"
    text = path.read_text(encoding="utf-8")
    patched = text
    for op in OPS:
        plain = f'@torch.library.register_fake("{op}")'
        guarded = f'@(torch.library.register_fake("{op}") if torchvision.extension._has_ops() else (lambda f: f))'
        if guarded not in patched:
            if plain not in patched:
                print(f"vllm_cpu_fixups: {path} has no registration of {op}; this torchvision needs no fix or a "
                      "new one", file=sys.stderr)
                return 1
            patched = patched.replace(plain, guarded)
    if patched != text:
        path.write_text(patched, encoding="utf-8")
        print(f"vllm_cpu_fixups: made the fake kernels of {', '.join(OPS)} conditional in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
