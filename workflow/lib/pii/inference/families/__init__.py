"""The model families, one module each; this registry is the only list of them. The config schema, the
``demo_models`` wildcard and the config checks all read it, so a new family is a new module here.

To add one, write ``families/<name>.py`` with a ``Family`` subclass (see ``base.py``) and ``FAMILY = <instance>``,
then add the module to ``_MODULES``. Importing this package imports no torch or transformers (the Snakefile
reads it)."""

from __future__ import annotations

from pii.inference.families import hf, instructblip, llava, llava_next, qwen2_5_vl
from pii.inference.families.base import Family

# Order matters only to the demo: a family's demo weights are seeded with seed + its index.
_MODULES = (qwen2_5_vl, llava, instructblip, hf, llava_next)
REGISTRY: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in _MODULES}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Family:
    from pii.core.stage import PipelineError

    if name not in REGISTRY:
        raise PipelineError(f"unknown model family '{name}'; use one of {names()}")
    return REGISTRY[name]


def supporting(analysis: str) -> list[str]:
    """Families whose models an encoder analysis (attention, layer_similarity, modality_gap) can run on."""
    return [name for name, family in REGISTRY.items() if analysis in family.analyses]
