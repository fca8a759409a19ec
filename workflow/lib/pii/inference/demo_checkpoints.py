"""Build the tiny, randomly initialised (seeded) checkpoint of one model family, fully offline (the family
module's ``build_demo``).

Each folder holds what ``from_pretrained`` needs: config, weights, generation config, a tokenizer trained here on a
built-in English word list (plus the family's special tokens), the image processor and the family's real chat
template. The pipeline then loads these folders by path through exactly the code that loads the real checkpoints.

Sizes follow each family's real shape where it matters to the analyses (patch 14, CLIP feature layer -2, Qwen's
window attention and 2x2 merge), everything else is shrunk so that a CPU builds each in seconds.
"""


import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from pii.core.stage import log
from pii.inference import families


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Build a folder next to ``path`` and swap it into place only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build(family: str, out: str | Path, seed: int = 0) -> Path:
    """Build the tiny checkpoint of ``family`` into folder ``out`` (replaced atomically)."""
    import torch

    builder = families.get(family)
    out = Path(out)
    with atomic_dir(out) as tmp:
        torch.manual_seed(seed + families.names().index(family))  # distinct weights per family, same seed
        builder.build_demo(Path(tmp))
        (Path(tmp) / "demo_model.json").write_text(json.dumps({"family": family, "seed": seed}) + "\n", encoding="utf-8")
    log.info("built tiny %s checkpoint in %s", family, out)
    return out
