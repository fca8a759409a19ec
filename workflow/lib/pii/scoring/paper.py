"""Which of our models is which model of the paper (workflow/data/paper_numbers.yaml), for the tables, figures and
report that print the paper's numbers beside ours. No heavy imports: the report's environment reads it too."""

from __future__ import annotations


def match_paper_models(models: dict[str, dict], paper_models: dict[str, dict]) -> dict[str, str]:
    """Our model key -> the paper's model key: by Hugging Face id, else by equal key, else by family when the
    family is unambiguous on both sides. An entry with its own image preprocessing (``image_preprocess`` other
    than ``checkpoint``, e.g. llava_1_5_pad) is not a model the paper ran and never matches."""
    models = {m: cfg for m, cfg in models.items() if cfg.get("image_preprocess", "checkpoint") == "checkpoint"}
    matched: dict[str, str] = {}
    for ours, cfg in models.items():
        for theirs, info in paper_models.items():
            if str(cfg.get("path", "")).lower() == str(info.get("hf_id", "")).lower():
                matched[ours] = theirs
                break
    for ours in models:
        if ours not in matched and ours in paper_models and ours not in matched.values():
            matched[ours] = ours
    taken = set(matched.values())
    for ours, cfg in models.items():
        if ours in matched:
            continue
        family = cfg.get("family")
        theirs = [k for k, v in paper_models.items() if v.get("family") == family and k not in taken]
        same_family = [k for k, v in models.items() if v.get("family") == family and k not in matched]
        if len(theirs) == 1 and same_family == [ours]:
            matched[ours] = theirs[0]
            taken.add(theirs[0])
    return matched
