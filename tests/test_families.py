"""Model families: the registry (``workflow/lib/pii/inference/families/__init__.py``) is the only list of them, a new
family is one module, and InstructBLIP loads from checkpoints whose processor files the stock
``InstructBlipProcessor`` cannot read on transformers 5.23."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from conftest import ROOT, copy_project, merge_configs, run_snakemake
from PIL import Image

from pii.inference import demo_checkpoints, families, vlm

# --- 1. the registry is the only list ----------------------------------------------------------------------------

# Files under workflow/ that may name several families:
EXCLUDED = (
    # the registry and the family modules themselves
    "workflow/lib/pii/inference/families/",
    # the paper's published numbers, keyed by the three models the paper evaluated (a fact about the paper that does
    # not change when a family is added), not a list of the families the workflow supports
    "workflow/data/paper_numbers.yaml",
    # byte-for-byte copies of the real checkpoints' files (hash-checked, not ours to edit); their vocabularies are
    # large dicts of arbitrary tokens
    "workflow/data/checkpoint_files/",
)
QUOTE = "[\"'`]?"


def _name_pattern(names) -> str:
    """One family name as a whole token: not part of a longer identifier (``llava_1_5``), a path
    (``resources/demo/models/llava``) or a hub id (``llava-hf/llava-1.5-7b-hf``)."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return rf"(?<![\w./-])(?:{alternatives})(?![\w/-])"


def _bracket_groups(text: str):
    """The comma-separated items of every bracketed group (``[...]``, ``(...)``, ``{...}``, nested ones included),
    each as (offset, item text)."""
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[tuple[str, list[int]]] = []
    for i, ch in enumerate(text):
        if ch in "([{":
            stack.append((ch, [i + 1]))
        elif ch == "," and stack:
            stack[-1][1].append(i + 1)
        elif ch in closing and stack and stack[-1][0] == closing[ch]:
            cuts = stack.pop()[1]
            ends = [c - 1 for c in cuts[1:]] + [i]
            yield [(start, text[start:end]) for start, end in zip(cuts, ends, strict=True)]


def _yaml_enumerations(text: str, is_name) -> list[int]:
    """Lines (1-based) of YAML sequences with two or more family names as items, or mappings with two or more
    family names as keys (block or flow style)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return []
    lines, todo = [], [root] if root is not None else []
    while todo:
        node = todo.pop()
        if isinstance(node, yaml.SequenceNode):
            named = [n for n in node.value if isinstance(n, yaml.ScalarNode) and is_name(n.value)]
            todo += node.value
        elif isinstance(node, yaml.MappingNode):
            named = [k for k, _ in node.value if isinstance(k, yaml.ScalarNode) and is_name(k.value)]
            todo += [v for pair in node.value for v in pair]
        else:
            continue
        if len({n.value for n in named}) >= 2:
            lines.append(named[0].start_mark.line + 1)
    return lines


def find_enumerations(text: str, names, yaml_file: bool = False) -> list[int]:
    """Lines (1-based) where ``text`` enumerates two or more distinct family ``names``: two names joined by a comma
    or a bar (a list, a tuple, a regex alternation, ``"a|b"``, a YAML flow list), two names among the items of one
    bracketed group (list, tuple, set, dict keys, keyword arguments), a run of ``- name`` list lines (commented out
    or not), equality tests against two different names (an if/elif or match dispatch on the family), and in YAML
    any sequence or mapping holding two names as items or keys."""
    name = _name_pattern(names)
    names = set(names)

    def line_of(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    lines = set()
    for m in re.finditer(rf"({name}){QUOTE}\s*[,|]\s*{QUOTE}(?=({name}))", text):
        if m.group(1) != m.group(2):
            lines.add(line_of(m.start(1)))
    item = re.compile(rf"\s*(?:-\s+)?{QUOTE}({name}){QUOTE}\s*(?:[:=].*)?", re.S)
    for items in _bracket_groups(text):
        hits = [(start + m.start(1), m.group(1)) for start, body in items if (m := item.fullmatch(body))]
        if len({n for _, n in hits}) >= 2:
            lines.add(line_of(hits[0][0]))
    run: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines() + [""], start=1):
        m = re.fullmatch(rf"\s*(?:#+\s*)?-\s+{QUOTE}({name}){QUOTE}\s*(?:#.*)?", line)
        if m:
            run.append((number, m.group(1)))
            continue
        if len({n for _, n in run}) >= 2:
            lines.add(run[0][0])
        run = run if re.fullmatch(r"\s*(?:#+\s*)?-\s.*", line) else []
    compared = [(m.start(), m.group(1) or m.group(2) or m.group(3)) for m in re.finditer(
        rf"(?:==|!=)\s*[\"']({name})[\"']|[\"']({name})[\"']\s*(?:==|!=)|\bcase\s+[\"']({name})[\"']", text)]
    if len({n for _, n in compared}) >= 2:
        lines.add(line_of(compared[0][0]))
    if yaml_file:
        lines.update(_yaml_enumerations(text, lambda value: value in names))
    return sorted(lines)


def scanned_files(project: Path) -> list[Path]:
    files = [project / "Snakefile"]
    for path in sorted((project / "workflow").rglob("*")):
        rel = path.relative_to(project).as_posix()
        if path.is_file() and "__pycache__" not in path.parts and not rel.startswith(EXCLUDED):
            files.append(path)
    return files


def family_lists(project: Path, names) -> list[str]:
    """``file:line: text`` for every enumeration of family names in the project's code, rules and schemas."""
    found = []
    for path in scanned_files(project):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a binary file (font, image)
        lines = text.splitlines()
        for number in find_enumerations(text, names, yaml_file=path.suffix in (".yaml", ".yml")):
            found.append(f"{path.relative_to(project).as_posix()}:{number}: {lines[number - 1].strip()}")
    return found


def test_the_registry_is_the_only_list_of_families():
    found = family_lists(ROOT, families.names())
    assert not found, ("family names listed outside workflow/lib/pii/inference/families/ (read families.names(), "
                       "families.supporting() or a Family attribute instead):\n" + "\n".join(found))


def test_the_scan_covers_rules_scripts_schemas_and_the_snakefile():
    scanned = {p.relative_to(ROOT).as_posix() for p in scanned_files(ROOT)}
    assert {"Snakefile", "workflow/rules/inference.smk", "workflow/rules/common.smk",
            "workflow/lib/pii/inference/vlm.py", "workflow/lib/pii/core/config.py", "workflow/scripts/infer.py",
            "workflow/schemas/config.schema.yaml"} <= scanned
    assert not any(p.startswith("workflow/lib/pii/inference/families/") for p in scanned)


@pytest.mark.parametrize("text, yaml_file, line", [
    ('rule demo_models:\n    wildcard_constraints:\n        family="qwen2_5_vl|llava|instructblip|hf",\n',
     False, 3),
    ('FAMILIES = ("qwen2_5_vl", "llava")\n', False, 1),
    ('x = 1\nSUPPORTED = [\n    "llava",\n    "clip",\n    "instructblip",\n]\n', False, 3),
    ('TOWERS = {"llava": "clip", "qwen2_5_vl": "qwen"}\n', False, 1),
    ("ENCODER = dict(llava='clip', qwen2_5_vl='qwen')\n", False, 1),
    ('ONE = re.compile(r"^(?:llava|hf)$")\n', False, 1),
    ('def tower(model, family):\n    if family == "llava":\n        return model.vision_tower\n'
     '    elif family == "qwen2_5_vl":\n        return model.visual\n', False, 2),
    ('match family:\n    case "llava":\n        pass\n    case "hf":\n        pass\n', False, 2),
    ("$defs:\n  family:\n    enum: [qwen2_5_vl, llava, instructblip, hf]\n", True, 3),
    ("$defs:\n  family:\n    enum:\n      - qwen2_5_vl\n      - llava\n", True, 4),
    ("towers:\n  llava: clip\n  qwen2_5_vl: qwen\n", True, 2),
    ("# demo checkpoints:\n#   - instructblip\n#   - hf\n", False, 2),
])
def test_the_scan_flags_a_list_of_families(text, yaml_file, line):
    assert find_enumerations(text, families.names(), yaml_file=yaml_file) == [line]


@pytest.mark.parametrize("text, yaml_file", [
    ('        family="|".join(families.names()),\n', False),
    ("    path: resources/demo/models/llava\n", True),
    ('if family == "llava":\n    pass\n', False),
    ("models: [qwen2_5_vl, llava_1_5]\n", True),  # one family name; llava_1_5 is a model key
    ("path: llava-hf/llava-1.5-7b-hf, Qwen/Qwen2.5-VL-7B-Instruct\n", True),
    ('analyses = frozenset({"attention", "layer_similarity"})\n', False),
    ("llava_1_5:\n  family: llava\ninstructblip_7b:\n  family: instructblip\n", True),
])
def test_the_scan_passes_single_names_paths_and_registry_reads(text, yaml_file):
    assert find_enumerations(text, families.names(), yaml_file=yaml_file) == []


def test_the_scan_finds_a_list_planted_in_a_rule(tmp_path):
    """The whole-tree check fails, naming file and line, once a rule lists the families again."""
    project = copy_project(tmp_path / "project")
    rule = project / "workflow" / "rules" / "inference.smk"
    text = rule.read_text(encoding="utf-8")
    planted = 'family="|".join(families.names()),'
    assert planted in text
    listed = 'family="' + "|".join(families.names()) + '",'
    rule.write_text(text.replace(planted, listed), encoding="utf-8")
    line = next(i for i, s in enumerate(rule.read_text().splitlines(), 1) if listed in s)
    found = family_lists(project, families.names())
    assert [f.split(": ")[0] for f in found] == [f"workflow/rules/inference.smk:{line}"], found


def test_the_scan_finds_the_lists_the_registry_replaced(tmp_path):
    """The tree before the registry (commit 8e29da4) listed the families in the rules, the schemas and four
    scripts; the scan names each of those files."""
    proc = subprocess.run(["git", "-C", str(ROOT), "archive", "8e29da4", "Snakefile", "workflow"], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("commit 8e29da4 is not in this checkout's history")
    tarfile.open(fileobj=io.BytesIO(proc.stdout)).extractall(tmp_path, filter="data")
    flagged = {f.split(":")[0] for f in family_lists(tmp_path, families.names())}
    assert {"workflow/rules/inference.smk", "workflow/schemas/config.schema.yaml", "workflow/scripts/vlm.py",
            "workflow/scripts/demo_models.py", "workflow/scripts/config_check.py",
            "workflow/scripts/layer_similarity.py"} <= flagged, flagged


# --- 2. a new family is a module only ---------------------------------------------------------------------------

TOY_MODULE = '''"""A family for the registry test: the generic hf family under another name."""

from pii.inference.families.hf import HuggingFaceImageTextToText


class Toy(HuggingFaceImageTextToText):
    name = "toy"


FAMILY = Toy()
'''


def toy_project(dest: Path, register: bool, **analysis) -> Path:
    """A copy of the project with ``families/toy.py`` (registered in ``_MODULES`` or not) and ``config.toy.yaml``:
    the demo config plus a model of family toy, whose checkpoint the demo builds."""
    project = copy_project(dest)
    package = project / "workflow" / "lib" / "pii" / "inference" / "families"
    (package / "toy.py").write_text(TOY_MODULE, encoding="utf-8")
    if register:
        init = package / "__init__.py"
        text, n = re.subn(r"^_MODULES = \((.*)\)$", r"from pii.inference.families import toy  # noqa: E402\n_MODULES = (\1, toy)",
                          init.read_text(encoding="utf-8"), flags=re.M)
        assert n == 1, "families/__init__.py no longer has a one-line _MODULES tuple; update this test"
        init.write_text(text, encoding="utf-8")
    cfg = yaml.safe_load((project / "config.demo.yaml").read_text(encoding="utf-8"))
    cfg["data"]["demo"]["models"] = [*cfg["data"]["demo"]["models"], "toy"]
    cfg["models"]["toy_vlm"] = {"family": "toy", "path": "resources/demo/models/toy", "dtype": "float32"}
    for key, value in analysis.items():
        cfg["analysis"][key].update(value)
    (project / "config.toy.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return project


def dry_run(project: Path, *targets: str, check: bool = True):
    work = project.parent / "work"
    work.mkdir(exist_ok=True)
    return run_snakemake(work, "-n", "--quiet=progress", *targets, project=project, configfile="config.toy.yaml",
                         check=check, timeout=300)


def planned_jobs(stdout: str) -> list[dict]:
    """Rule, outputs and wildcards of every job a dry run (--quiet=progress) plans."""
    jobs = []
    for block in re.split(r"^(?=rule \w+:$)", stdout, flags=re.M)[1:]:
        rule = re.match(r"rule (\w+):", block).group(1)
        outputs = re.search(r"^\s+output: (.*)$", block, re.M)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        jobs.append({"rule": rule, "output": outputs.group(1).split(", ") if outputs else [],
                     "wildcards": dict(w.split("=", 1) for w in wildcards.group(1).split(", ")) if wildcards else {}})
    return jobs


def merged_config(project: Path) -> dict:
    """config.yaml updated by config.toy.yaml, as Snakemake merges them."""
    def read(name):
        return yaml.safe_load((project / name).read_text(encoding="utf-8"))

    return merge_configs(read("config.yaml"), read("config.toy.yaml"))


def config_errors(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Config error:")]


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Path:
    return toy_project(tmp_path_factory.mktemp("toy_registered") / "project", register=True)


@pytest.mark.slow
def test_unregistered_family_is_one_config_error(tmp_path):
    project = toy_project(tmp_path / "project", register=False)
    proc = dry_run(project, check=False)
    assert proc.returncode != 0
    assert config_errors(proc) == [f"Config error: models.toy_vlm.family: 'toy' is not one of {families.names()}. "
                                   "Use one of those"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # Nor does the demo build rule take an unregistered family as its wildcard.
    plain = run_snakemake(project.parent / "work", "-n", "resources/demo/models/toy", project=project, check=False,
                          timeout=300)
    assert plain.returncode != 0 and "MissingRuleException" in plain.stdout + plain.stderr, plain.stderr[-2000:]


@pytest.mark.slow
def test_registered_family_validates_and_plans_its_jobs(registered):
    cfg = merged_config(registered)
    jobs = planned_jobs(dry_run(registered).stdout)
    toy_build = {"rule": "demo_models", "output": ["resources/demo/models/toy"], "wildcards": {"family": "toy"}}
    assert toy_build in jobs
    infer = sorted(out for job in jobs if job["rule"] == "infer" and job["wildcards"]["model"] == "toy_vlm"
                   for out in job["output"])
    # each task in its own settings, or in every setting no task claims (POPE and captions)
    claimed = {s for task in cfg["tasks"].values() for s in task.get("settings") or []}
    study = [s for s in cfg["settings"] if s not in claimed]
    assert infer == sorted(f"results/inference/{task}/toy_vlm/{setting}/r{r}.parquet"
                           for task, task_cfg in cfg["tasks"].items() for setting in task_cfg.get("settings") or study
                           for r in range(cfg["inference"]["repeats"]))


@pytest.mark.slow
def test_registered_family_is_a_demo_build_target(registered):
    jobs = planned_jobs(dry_run(registered, "resources/demo/models/toy").stdout)
    assert jobs == [{"rule": "demo_models", "output": ["resources/demo/models/toy"],
                     "wildcards": {"family": "toy"}}]


@pytest.mark.slow
def test_analysis_on_a_family_without_it_is_one_config_error(tmp_path):
    project = toy_project(tmp_path / "project", register=True, attention={"model": "toy_vlm"})
    proc = dry_run(project, check=False)
    assert proc.returncode != 0
    assert config_errors(proc) == [
        "Config error: analysis.attention.model: 'toy_vlm' is a toy model; attention runs on models of the families "
        f"{families.supporting('attention')}. Name one of those"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# --- 3. InstructBLIP loads robustly -----------------------------------------------------------------------------

QUERY_TOKENS, BOS = 32, 2  # instructblip-vicuna-7b: 32 query tokens; its tokenizer puts </s> (id 2) first
TEXTS = ["Is there a dog in the image?", "Describe"]


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _without_query_tokens(folder: Path) -> None:
    _edit_json(folder / "processor_config.json", lambda c: c.pop("num_query_tokens"))


def _image_token_as_string(folder: Path) -> None:
    # As the hub's tokenizer configs give it (llava-hf/llava-1.5-7b-hf's, in workflow/data/checkpoint_files, has
    # both keys): transformers then makes tokenizer.image_token the plain string "<image>".
    _edit_json(folder / "tokenizer_config.json",
               lambda c: c.update(image_token="<image>", extra_special_tokens={"image_token": "<image>"}))


def _video_processor_class(folder: Path) -> None:
    for name in ("processor_config.json", "tokenizer_config.json", "qformer_tokenizer/tokenizer_config.json"):
        _edit_json(folder / name, lambda c: c.update(processor_class="InstructBlipVideoProcessor"))


VARIANTS = {"no_num_query_tokens": _without_query_tokens, "image_token_string": _image_token_as_string,
            "video_processor_class": _video_processor_class}


@pytest.fixture(scope="session")
def instructblip_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The demo InstructBLIP checkpoint (built once) and three copies, each with one defect seen on the hub."""
    root = tmp_path_factory.mktemp("instructblip")
    base = demo_checkpoints.build("instructblip", root / "intact", seed=0)
    folders = {"intact": base}
    for name, edit in VARIANTS.items():
        folders[name] = Path(shutil.copytree(base, root / name))
        edit(folders[name])
    return folders


@pytest.fixture(scope="module")
def images():
    return [Image.new("RGB", (64, 48), "white"), Image.new("RGB", (40, 90), (200, 30, 30))]


def test_stock_processor_reads_the_intact_checkpoint(instructblip_checkpoints, images):
    """The control: on the demo checkpoint as saved, AutoProcessor gives InstructBLIP's layout (32 image tokens,
    then </s> and the text), the layout the family's own encoding reproduces."""
    folder = instructblip_checkpoints["intact"]
    stock = transformers.AutoProcessor.from_pretrained(folder)
    assert type(stock).__name__ == "InstructBlipProcessor"
    ids = stock(images=images[:1], text=TEXTS[:1], return_tensors="pt")["input_ids"][0].tolist()
    lm = vlm.load_model("ib", {"family": "instructblip", "path": str(folder)})
    assert vlm.prepare_inputs(lm, TEXTS[:1], images[:1])["input_ids"][0].tolist() == ids


def test_stock_processor_without_num_query_tokens(instructblip_checkpoints, images):
    """transformers 5.23 loads the processor with ``num_query_tokens=None`` (no error, no warning) and fails on the
    first request with an image."""
    for loader in (transformers.AutoProcessor, transformers.InstructBlipProcessor):
        stock = loader.from_pretrained(instructblip_checkpoints["no_num_query_tokens"])
        assert stock.num_query_tokens is None
        with pytest.raises(TypeError, match="NoneType"):
            stock(images=images[:1], text=TEXTS[:1], return_tensors="pt")


def test_stock_processor_with_image_token_as_string(instructblip_checkpoints, images):
    """The processor takes ``tokenizer.image_token``, here a plain string, and fails on the first request with an
    image (it reads the token's ``.content``)."""
    for loader in (transformers.AutoProcessor, transformers.InstructBlipProcessor):
        stock = loader.from_pretrained(instructblip_checkpoints["image_token_string"])
        assert stock.image_token == "<image>" and isinstance(stock.image_token, str)
        with pytest.raises(AttributeError, match="content"):
            stock(images=images[:1], text=TEXTS[:1], return_tensors="pt")


def test_stock_processor_with_video_processor_class(instructblip_checkpoints):
    """AutoProcessor follows ``processor_class`` to InstructBlipVideoProcessor and fails for want of a video
    processor; naming the class, ``InstructBlipProcessor.from_pretrained``, still loads (on transformers 5.23)."""
    folder = instructblip_checkpoints["video_processor_class"]
    with pytest.raises(OSError, match="video processor"):
        transformers.AutoProcessor.from_pretrained(folder)
    assert type(transformers.InstructBlipProcessor.from_pretrained(folder)).__name__ == "InstructBlipProcessor"


@pytest.mark.parametrize("variant", ["intact", *VARIANTS])
def test_family_loads_and_encodes_every_variant(instructblip_checkpoints, images, variant):
    """Per request: 32 image tokens, BOS </s> (id 2), the text; the whole row left padded; the Q-Former text right
    padded; 224 x 224 pixels."""
    lm = vlm.load_model("ib", {"family": "instructblip", "path": str(instructblip_checkpoints[variant])})
    tok = lm.tokenizer
    image_id = lm.model.config.image_token_index
    assert image_id == tok.convert_tokens_to_ids("<image>")
    assert lm.processor.num_query_tokens == QUERY_TOKENS
    inputs = vlm.prepare_inputs(lm, TEXTS, images)
    rows = [[image_id] * QUERY_TOKENS + [BOS] + tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    width = max(map(len, rows))
    assert len(rows[0]) != len(rows[1])
    assert inputs["input_ids"].tolist() == [[tok.pad_token_id] * (width - len(r)) + r for r in rows]
    assert inputs["attention_mask"].tolist() == [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    qtok = lm.processor.qformer_tokenizer
    qrows = [qtok(t)["input_ids"] for t in TEXTS]
    qwidth = max(map(len, qrows))
    assert inputs["qformer_input_ids"].tolist() == [r + [qtok.pad_token_id] * (qwidth - len(r)) for r in qrows]
    assert tuple(inputs["pixel_values"].shape) == (2, 3, 224, 224)


def _drop_eos(model) -> None:
    """What a checkpoint whose generation configs lack the stop token looks like (InstructBLIP's generate delegates
    to its language model, which has its own generation config)."""
    model.generation_config.eos_token_id = None
    model.config.text_config.eos_token_id = None
    language_model = getattr(model, "language_model", None)
    if getattr(language_model, "generation_config", None) is not None:
        language_model.generation_config.eos_token_id = None


class _EosAfter:
    """A forward hook on the output layer: </s> is impossible for the first ``k`` generated tokens, then certain."""

    def __init__(self, k: int, eos: int):
        self.k, self.eos, self.steps = k, eos, 0

    def __call__(self, module, args, logits):
        logits = logits.clone()
        logits[..., self.eos] = -1e9 if self.steps < self.k else 1e9
        self.steps += 1
        return logits


def test_caption_stops_at_the_tokenizers_eos(instructblip_checkpoints, images):
    lm = vlm.load_model("ib", {"family": "instructblip", "path": str(instructblip_checkpoints["intact"])})
    _drop_eos(lm.model)
    assert lm.tokenizer.eos_token_id == BOS
    k, budget = 3, 20
    hook = _EosAfter(k, lm.tokenizer.eos_token_id)
    handle = lm.model.get_output_embeddings().register_forward_hook(hook)
    try:
        # The control: a bare generate with these configs does not stop at </s> and runs out the budget.
        inputs = vlm.prepare_inputs(lm, TEXTS[1:], images[:1])
        with torch.inference_mode():
            bare = lm.model.generate(**inputs, max_new_tokens=budget, do_sample=False)
        assert hook.steps == budget and bare[0, -budget + k].item() == BOS
        hook.steps = 0
        decoding = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
        [row] = vlm.generate(lm, TEXTS[1:], images[:1], budget, decoding, seed=0)
    finally:
        handle.remove()
    assert hook.steps == k + 1  # generation ended at the step that emitted </s>
    assert row["finish_reason"] == "stop" and row["n_response_tokens"] == k
