"""The documentation (README.md, CONTRIBUTING.md, docs/*.md) mentions only what exists.

What is read, and how it is classified:

- Inline code spans (`...`, one line each) and the lines of ``bash`` / ``sh`` / ``shell`` / ``console`` fenced
  blocks. Other fenced blocks (``yaml``) are examples and are not checked.
- **Paths**: a span without white space that contains "/" or ends in a known extension, and is not a URL, a single
  ``<token>`` or a bare extension. ``{wildcard}``, ``<placeholder>`` and ``*`` match one path part, ``{a,b}`` one of
  the alternatives.
  - Under ``results/``, ``logs/``, ``resources/`` (files the workflow writes): the mention must match an output, log
    or benchmark path that a dry run plans, for the demo config or for ``config.yaml``. A folder matches when a
    planned path lies under it. A few places are written outside the declared outputs (``OUTSIDE_OUTPUTS``); each
    entry names the file that writes or names it, and a test checks that it still does. ``.snakemake/`` is
    Snakemake's own.
  - ``.venv/``, ``.venv-vllm/`` and ``../shared`` are skipped (``SKIPPED``); a path whose first part is a
    placeholder (``<root>/annotations/``) is under a user's folder and is skipped; absolute paths must be in
    ``ABSOLUTE_PATHS``.
  - ``owner/name`` whose first part is no folder of the project is a Hugging Face id: it must occur in the
    project's code or configs, or be one of the ``HUB_EXAMPLES``.
  - A bare file name (no "/") must be the name of a project file or of a planned output.
  - Everything else must exist relative to the project root (placeholders matched by glob).
- **Test ids**: ``tests/test_x.py::test_y``, ``test_x.py::test_y`` and ``::test_y`` (the file named before it on
  the same line): the file exists and defines the test.
- **Config keys**: a dotted span (``inference.batch_size``, ``models.<m>.backend``, ``decoding.*``; also the key of
  a ``key: value`` span) whose first part is a top-level config key must resolve in
  workflow/schemas/config.schema.yaml or in one of the shipped configs; ``<x>`` matches any name.
- **Rule names**: "rule `x`" and "rules `x`, `y` and `z`" in the text, ``--forcerun x`` anywhere in code and
  ``-R x`` in commands must name rules defined in the Snakefile or workflow/rules/*.smk.
- **Commands** (fenced shell lines; inline spans that start with bash, python, snakemake or pytest, a ``.py``
  script or a ``-`` option): ``bash run.sh X`` needs a ``case`` arm X in run.sh; ``python script.py --opt`` needs
  the script and each ``--opt`` in its text; ``python -m pii.x.y`` needs workflow/lib/pii/x/y.py; ``--profile P``
  needs profiles/P; ``--configfile F ...`` needs each file; ``pytest PATH`` needs each path, and ``-m EXPR`` markers
  declared in pytest.ini; snakemake targets are paths as above.
- **Links**: a relative Markdown link must name an existing file, and its ``#anchor`` a heading there.

The planned outputs come from two dry runs (``snakemake -n``, a few seconds each) shared by the module.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, planned_outputs, run_snakemake

DOC_FILES = ["README.md", "CONTRIBUTING.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]

KNOWN_EXTENSIONS = {"py", "smk", "yaml", "yml", "md", "txt", "sh", "json", "parquet", "png", "html", "csv", "tsv",
                    "log", "j2", "rst", "jinja", "jpg", "toml", "ini", "zip"}
# Top folders of what the workflow writes: checked against what a dry run plans.
WRITTEN_ROOTS = ("results", "logs", "resources")
# Not checked: the virtual environments run.sh makes, and the shared folder beside a checkout.
SKIPPED = (".venv", ".venv-vllm", "../shared")
# Written by a job outside its declared outputs (so no dry run lists them): pattern ({x} and <x> as *) -> the file
# that writes or names the place, and the text it must contain.
OUTSIDE_OUTPUTS = {
    "results/inference/.partial/": ("workflow/rules/inference.smk", "results/inference/.partial"),
    "results/inference/.cache/": ("workflow/rules/inference.smk", "results/inference/.cache"),
    "results/images/*/*/": ("workflow/rules/render.smk", "results/images/{task}/{variant}/"),
    "logs/slurm/": ("profiles/slurm/config.yaml", "logs/slurm"),
    ".snakemake/": ("Snakefile", ""),  # Snakemake's own folder in the working directory
}
# Absolute paths the docs may name -> the file that uses them, and the text it must contain.
ABSOLUTE_PATHS = {
    "/tmp/pii-gpu-locks-<uid>/": ("workflow/lib/pii/core/gpu_slot.py", "pii-gpu-locks-"),
}
# Hugging Face ids given as examples only (every other id must occur in the project's code or configs).
HUB_EXAMPLES = {"google/gemma-3-4b-it", "llava-hf/llava-1.5-13b-hf"}
# Folders skipped when listing the project's files.
NOT_PROJECT = {".git", ".venv", ".venv-vllm", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
               ".snakemake", "results", "resources", "logs"}
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
COMMAND_WORDS = {"bash", "sh", "python", "python3", "snakemake", "pytest"}
# snakemake options whose values are not checked: one value, or every value up to the next option
ONE_VALUE = {"--cores", "-c", "--jobs", "-j", "--sdm", "--software-deployment-method", "--directory", "-d",
             "--report", "--list-changes", "--latency-wait", "--executor", "-e", "--retries", "--snakefile", "-s"}
MANY_VALUES = {"--resources", "--default-resources", "--set-resources", "--set-threads", "--rerun-triggers",
               "--config", "-C"}
RULE_OPTIONS = {"--forcerun", "-R", "--until", "-U", "--omit-from", "-O"}

KEY_RE = re.compile(r"[a-z_][a-z0-9_]*(?:\.(?:<[^<>\s.]+>|\{\w+\}|[A-Za-z0-9_-]+|\*))+")
PATH_CHARS_RE = re.compile(r"[\w.\-/{}<>*,~@+]+")
PLACEHOLDER_RE = re.compile(r"\{[^{}]*\}|<[^<>]*>")
SPAN_RE = re.compile(r"`([^`]+)`")
RULE_PROSE_RE = re.compile(r"\brules?\s+(`\w+`(?:(?:\s*,\s*|\s+and\s+|\s+or\s+|\s*/\s*)`\w+`)*)", re.I)
LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def field_paths(dry_run_stdout: str, field: str) -> list[str]:
    """Every path of one field (log, benchmark) of the jobs a dry run plans (run with --quiet=progress)."""
    return [p for line in re.findall(rf"^\s+{field}: (.*)$", dry_run_stdout, re.M) for p in line.split(", ")]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m and not fenced:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def path_regex(mention: str) -> str:
    """A path mention as a regular expression: {a,b} one of them, {x} / <x> / * one path part (or part of one)."""
    out = []
    for part in re.split(r"(\{[^{}]*\}|<[^<>]*>|\*)", mention):
        if not part:
            continue
        if part == "*":
            out.append(r"[^/]*")
        elif part.startswith("{") and "," in part:
            out.append("(?:" + "|".join(re.escape(a) for a in part[1:-1].split(",")) + ")")
        elif part[0] in "{<":
            out.append(r"[^/]+")
        else:
            out.append(re.escape(part))
    return "".join(out)


def path_globs(mention: str) -> list[str]:
    """A path mention as glob patterns: {a,b} expanded, {x} and <x> as *."""
    m = re.search(r"\{([^{}]*,[^{}]*)\}", mention)
    if m:
        return [g for alt in m.group(1).split(",")
                for g in path_globs(mention[:m.start()] + alt + mention[m.end():])]
    return [PLACEHOLDER_RE.sub("*", mention)]


class DocChecker:
    """Checks the mentions of one Markdown text against the project at ``root`` and the paths a dry run plans."""

    def __init__(self, root: Path, planned: list[str]):
        self.root = root
        self.planned = sorted(set(planned))
        self.planned_names = {p.rsplit("/", 1)[-1] for p in self.planned}
        self.top_entries = set(os.listdir(root))
        self.rules = set()
        for f in [root / "Snakefile", *sorted((root / "workflow" / "rules").glob("*.smk"))]:
            self.rules |= set(re.findall(r"^rule (\w+):", f.read_text(encoding="utf-8"), re.M))
        run_sh = (root / "run.sh").read_text(encoding="utf-8")
        self.subcommands = {name for arm in re.findall(r"^\s+([\w|-]+)\)\s*$", run_sh, re.M) for name in arm.split("|")}
        self.schema = yaml.safe_load((root / "workflow/schemas/config.schema.yaml").read_text(encoding="utf-8"))
        self.configs = [yaml.safe_load((root / name).read_text(encoding="utf-8"))
                        for name in ("config.yaml", "config.demo.yaml", "config.demo-vllm.yaml")]
        self.top_keys = set(self.schema.get("properties", {})) | set(self.configs[0])
        ini = (root / "pytest.ini").read_text(encoding="utf-8")
        self.markers = set(re.findall(r"^\s+(\w+):", ini.split("markers", 1)[-1], re.M))
        self.file_names: set[str] = set()
        corpus = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in NOT_PROJECT]
            self.file_names.update(files)
            rel = Path(folder).relative_to(root)
            if rel.parts[:1] in ((), ("workflow",), ("tests",), ("bench",)):
                corpus += [Path(folder, f).read_text(encoding="utf-8", errors="replace") for f in files
                           if f.endswith((".py", ".yaml", ".smk"))]
        self.corpus = "\n".join(corpus)

    # ---- one Markdown text ----

    def check(self, doc: str, text: str) -> list[str]:
        """One line per problem: ``doc:line: `mention`: why``."""
        problems: list[str] = []

        def report(lineno, mention, why):
            if why:
                problems.append(f"{doc}:{lineno}: `{mention}`: {why}")

        fence = None
        headings = {doc: anchors(text)}
        for lineno, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("```"):
                fence = None if fence is not None else stripped[3:].strip().lower()
                continue
            if fence is not None:
                if fence in SHELL_LANGUAGES and stripped:
                    command = re.sub(r"^\$\s+", "", stripped)
                    for mention, why, _ in self.check_command(command):
                        report(lineno, mention, why)
                continue
            if line.count("`") % 2:
                report(lineno, line.strip()[:60], "odd number of backticks: keep each code span on one line")
                continue
            for m in RULE_PROSE_RE.finditer(line):
                for name in re.findall(r"`(\w+)`", m.group(1)):
                    report(lineno, name, self.check_rule(name))
            last_test_file = None
            for span in SPAN_RE.findall(line):
                for mention, why, test_file in self.check_span(span, last_test_file):
                    report(lineno, mention, why)
                    last_test_file = test_file or last_test_file
            for target in LINK_RE.findall(line):
                report(lineno, target, self.check_link(doc, target, headings))
        return problems

    def check_link(self, doc: str, target: str, headings: dict) -> str | None:
        if re.match(r"[a-z]+:", target):
            return None
        path, _, anchor = target.partition("#")
        if path:
            file = (self.root / doc).parent / path
            if not file.exists():
                return f"links to {path}, which does not exist (relative to {doc})"
            key = str(file.resolve().relative_to(self.root.resolve()))
            if anchor and key not in headings:
                headings[key] = anchors(file.read_text(encoding="utf-8")) if file.suffix == ".md" else set()
        else:
            key = doc
        if anchor and anchor not in headings[key]:
            return f"no heading in {key} has the anchor #{anchor}"
        return None

    # ---- one inline code span ----

    def check_span(self, span: str, last_test_file: str | None):
        """(mention, why or None, test file or None) for what the span mentions."""
        s = span.strip().replace("\\|", "|")
        if not s:
            return []
        if re.search(r"\s", s):
            m = re.match(r"(\S+): \S", s)
            if m and self.is_key(m.group(1)):
                return [(m.group(1), self.check_key(m.group(1)), None)]
            if self.is_command(s):
                return self.check_command(s)
            # prose or a message: only a --forcerun in it is checked (-R is chmod's too)
            return [(name, self.check_rule(name), None)
                    for name in re.findall(r"--forcerun\s+(\w+)", s)]
        if "://" in s:
            return []
        if "::" in s:
            file, why = self.check_test_id(s, last_test_file)
            return [(s, why, file)]
        if self.is_key(s):
            return [(s, self.check_key(s), None)]
        if self.is_path(s):
            return [(s, self.check_path(s), None)]
        return []

    def is_key(self, s: str) -> bool:
        if not KEY_RE.fullmatch(s):
            return False
        parts = s.split(".")
        return parts[0] in self.top_keys and parts[-1] not in KNOWN_EXTENSIONS

    def is_path(self, s: str) -> bool:
        if not PATH_CHARS_RE.fullmatch(s) or re.fullmatch(r"<[^<>]*>", s) or re.fullmatch(r"\.\w+", s):
            return False
        return "/" in s or s.rsplit(".", 1)[-1] in KNOWN_EXTENSIONS and "." in s

    def is_command(self, s: str) -> bool:
        words = s.split()
        while words and re.match(r"[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]
        if not words:
            return False
        first = words[0]
        return first.rsplit("/", 1)[-1] in COMMAND_WORDS or first.endswith(".py") or first.startswith("-")

    # ---- what is mentioned ----

    def check_rule(self, name: str) -> str | None:
        if PLACEHOLDER_RE.fullmatch(name) or name in self.rules:
            return None
        return "no rule of that name in the Snakefile or workflow/rules/*.smk"

    def check_key(self, key: str) -> str | None:
        parts = key.split(".")
        if self.resolve(self.schema, parts) or any(self.in_config(c, parts) for c in self.configs):
            return None
        return "not a key of workflow/schemas/config.schema.yaml or of the shipped configs"

    def deref(self, node):
        while isinstance(node, dict) and "$ref" in node:
            node = self.schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        return node

    def resolve(self, node, parts) -> bool:
        node = self.deref(node)
        if not parts:
            return True
        if not isinstance(node, dict):
            return False
        head, rest = parts[0], parts[1:]
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        patterns = node.get("patternProperties", {})
        types = node.get("type", "object")
        is_object = "object" in (types if isinstance(types, list) else [types]) or props
        if is_object and not props and not patterns and extra is None:
            return True  # a free-form object (e.g. inference.vllm.engine)
        if head == "*":
            return bool(is_object)
        if PLACEHOLDER_RE.fullmatch(head):
            candidates = [*props.values(), *patterns.values()]
        else:
            candidates = [props[head]] if head in props else []
            candidates += [sub for pat, sub in patterns.items() if re.search(pat, head)]
        if isinstance(extra, dict):
            candidates.append(extra)
        return any(self.resolve(c, rest) for c in candidates)

    def in_config(self, node, parts) -> bool:
        if not parts:
            return True
        if not isinstance(node, dict):
            return False
        head, rest = parts[0], parts[1:]
        if head == "*":
            return bool(node)
        if PLACEHOLDER_RE.fullmatch(head):
            return any(self.in_config(v, rest) for v in node.values())
        return head in node and self.in_config(node[head], rest)

    def check_test_id(self, s: str, last_file: str | None) -> tuple[str | None, str | None]:
        file, _, name = s.partition("::")
        name = re.sub(r"\[.*\]$", "", name)
        if not file:
            if last_file is None:
                return None, "a ::test without a test file before it on the line"
            file = last_file
        path = self.root / file if "/" in file else self.root / "tests" / file
        if not path.is_file():
            return None, f"no test file {path.relative_to(self.root)}"
        source = path.read_text(encoding="utf-8")
        if name and not re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b", source, re.M):
            return file, f"{path.relative_to(self.root)} defines no test {name}"
        return file, None

    def check_path(self, p: str) -> str | None:
        if p in ABSOLUTE_PATHS:
            return None
        if p.startswith("/"):
            return "an absolute path (name it in ABSOLUTE_PATHS of tests/test_docs.py if the project uses it)"
        first = p.split("/")[0]
        if first in SKIPPED or any(p.startswith(s + "/") for s in SKIPPED):
            return None
        if PLACEHOLDER_RE.fullmatch(first) and "/" in p:
            return None  # under a folder of the user's, e.g. <root>/annotations/
        if first in WRITTEN_ROOTS or first == ".snakemake":
            return self.check_written(p)
        if "/" not in p.rstrip("/"):
            if p.endswith("/"):
                return None if (self.root / p).is_dir() else "no such folder in the project"
            pattern = PLACEHOLDER_RE.sub("*", p)
            if any(fnmatch.fnmatchcase(n, pattern) for n in self.file_names | self.planned_names):
                return None
            return "no file of this name in the project or among the planned outputs"
        if first not in self.top_entries and re.fullmatch(r"[\w.-]+/[\w.-]+", p) \
                and p.rsplit(".", 1)[-1] not in KNOWN_EXTENSIONS:
            if p in HUB_EXAMPLES or p in self.corpus:
                return None
            return (f"'{first}' is no folder of the project, and as a Hugging Face id it occurs nowhere in the "
                    "project's code or configs (add examples to HUB_EXAMPLES)")
        for pattern in path_globs(p):
            found = list(self.root.glob(pattern.rstrip("/"))) if any(c in pattern for c in "*?[") \
                else [self.root / pattern.rstrip("/")]
            if any(f.is_dir() if p.endswith("/") else f.exists() for f in found):
                return None
        return "does not exist in the project"

    def check_written(self, p: str) -> str | None:
        rx = re.compile(path_regex(p.rstrip("/")) + r"(?:/.*)?")
        if any(rx.fullmatch(x) for x in self.planned):
            return None
        if any(p.startswith(x + "/") for x in self.planned):
            return None  # inside a directory output
        general = PLACEHOLDER_RE.sub("*", p)
        if any(fnmatch.fnmatchcase(general, pattern + "*") for pattern in OUTSIDE_OUTPUTS):
            return None
        return ("matches no output, log or benchmark that a dry run plans (demo config and config.yaml), "
                "nor a place in OUTSIDE_OUTPUTS")

    # ---- commands ----

    def check_command(self, text: str) -> list[tuple[str, str | None, None]]:
        try:
            tokens = shlex.split(text, comments=True)
        except ValueError:
            tokens = text.split()
        tokens = [t.strip("[]") for t in tokens if t.strip("[]")]
        out: list[tuple[str, str | None, None]] = []

        def note(mention, why):
            out.append((mention, why, None))

        segments, current = [], []
        for t in tokens:
            if t in ("|", "||", "&&", ";"):
                segments.append(current)
                current = []
            else:
                current.append(t)
        segments.append(current)
        for seg in segments:
            while seg and re.match(r"[A-Z_][A-Z0-9_]*=", seg[0]):
                value = seg[0].split("=", 1)[1]
                if self.is_path(value):
                    note(value, self.check_path(value))
                seg = seg[1:]
            if not seg:
                continue
            prog, args = seg[0], seg[1:]
            base = prog.rsplit("/", 1)[-1]
            if "/" in prog and (base in COMMAND_WORDS or prog.endswith(".py")):
                note(prog, self.check_path(prog))
            if base in ("bash", "sh"):
                if args[:1] == ["run.sh"]:
                    sub = args[1] if len(args) > 1 else ""
                    note(f"bash run.sh {sub}".strip(),
                         None if sub in self.subcommands else
                         f"run.sh has no subcommand '{sub}' (it has {sorted(self.subcommands)})")
                elif args:
                    note(args[0], self.check_path(args[0]))
            elif base in ("python", "python3"):
                if args[:1] == ["-m"] and len(args) > 1:
                    module, rest = args[1], args[2:]
                    if module.split(".")[0] == "pii":
                        self.check_module(module, rest, note)
                    elif module == "pytest":
                        self.check_pytest(rest, note)
                    elif module == "snakemake":
                        self.check_snakemake(rest, note)
                elif args and args[0].endswith(".py"):
                    self.check_script(args[0], args[1:], note)
            elif base == "snakemake":
                self.check_snakemake(args, note)
            elif base == "pytest":
                self.check_pytest(args, note)
            elif prog.endswith(".py"):
                self.check_script(prog, args, note, path_checked="/" in prog)
            elif prog.startswith("-"):
                self.check_snakemake(seg, note)
        return out

    def check_options(self, source: str, where: str, args: list[str], note) -> None:
        for a in args:
            if a.startswith("--") and a != "--help":
                option = a.split("=", 1)[0]
                note(option, None if option in source else f"{where} has no option {option}")

    def check_script(self, script: str, args: list[str], note, path_checked: bool = False) -> None:
        why = self.check_path(script)
        if not path_checked:
            note(script, why)
        if why is None and (self.root / script).is_file():
            self.check_options((self.root / script).read_text(encoding="utf-8"), script, args, note)

    def check_module(self, module: str, args: list[str], note) -> None:
        base = self.root / "workflow" / "lib" / Path(*module.split("."))
        file = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if not file.is_file():
            note(module, f"no module file workflow/lib/{'/'.join(module.split('.'))}.py")
            return
        note(module, None)
        self.check_options(file.read_text(encoding="utf-8"), str(file.relative_to(self.root)), args, note)

    def check_pytest(self, args: list[str], note) -> None:
        i = 0
        while i < len(args):
            a = args[i]
            if a == "-m" and i + 1 < len(args):
                for word in re.findall(r"\w+", args[i + 1]):
                    if word not in ("not", "and", "or"):
                        note(word, None if word in self.markers else "no pytest marker of that name in pytest.ini")
                i += 2
                continue
            if not a.startswith("-"):
                if "::" in a:
                    note(a, self.check_test_id(a, None)[1])
                else:
                    note(a, self.check_path(a))
            i += 1

    def check_snakemake(self, args: list[str], note) -> None:
        i = 0
        while i < len(args):
            a = args[i]
            option, _, inline = a.partition("=") if a.startswith("--") else (a, "", "")
            values = [inline] if inline else []
            if a.startswith("-") and not inline:
                j = i + 1
                while j < len(args) and not args[j].startswith("-"):
                    values.append(args[j])
                    j += 1
            if not a.startswith("-"):
                if self.is_path(a) and not PLACEHOLDER_RE.fullmatch(a):
                    note(a, self.check_path(a))
                i += 1
                continue
            if option == "--profile":
                profile = values[:1]
                for p in profile:
                    ok = (self.root / "profiles" / p).is_dir() or (self.root / p).is_dir()
                    note(p, None if ok else "no such profile (profiles/<name> or a folder)")
                i += 1 + (0 if inline else len(profile))
            elif option in ("--configfile", "--configfiles"):
                for f in values:
                    note(f, self.check_path(f))
                i += 1 + (0 if inline else len(values))
            elif option in RULE_OPTIONS:
                for name in values:
                    note(name, self.check_rule(name))
                i += 1 + (0 if inline else len(values))
            elif option in ONE_VALUE:
                i += 1 + (0 if inline else min(1, len(values)))
            elif option in MANY_VALUES:
                i += 1 + (0 if inline else len(values))
            else:
                i += 1


@pytest.fixture(scope="module")
def checker(tmp_path_factory) -> DocChecker:
    """The project as it is, and every path that a dry run of the demo and of config.yaml plans."""
    planned: list[str] = []
    for name, configfile in (("demo", "config.demo.yaml"), ("paper", None)):
        work = tmp_path_factory.mktemp(f"docs_{name}")
        proc = run_snakemake(work, "-n", "--quiet=progress", configfile=configfile, timeout=300)
        planned += planned_outputs(proc.stdout)
        planned += field_paths(proc.stdout, "log") + field_paths(proc.stdout, "benchmark")
    assert any(p.startswith("results/report/") for p in planned), "the dry runs planned no report: see their output"
    return DocChecker(ROOT, planned)


@pytest.mark.parametrize("doc", DOC_FILES)
def test_docs_mention_only_what_exists(checker, doc):
    problems = checker.check(doc, (ROOT / doc).read_text(encoding="utf-8"))
    assert not problems, f"{len(problems)} mention(s) in {doc} name nothing that exists:\n" + "\n".join(problems)


def test_allow_lists_are_grounded():
    """Each place the docs may name without a dry run planning it is still named by the file given as its reason."""
    for place, (file, text) in {**OUTSIDE_OUTPUTS, **ABSOLUTE_PATHS}.items():
        assert text in (ROOT / file).read_text(encoding="utf-8"), f"{place}: {file} no longer contains {text!r}"


def test_checker_finds_a_bad_path_key_and_rule():
    """The checker can fail: a made-up page with one bad path, one bad config key and one bad rule name, beside
    good mentions of each kind."""
    planned = ["results/tables/table1_pope.md", "logs/inference/llava_1_5/r0.log"]
    page = "\n".join([
        "# A page",
        "Good: `config.yaml`, `workflow/rules/inference.smk`, `results/tables/{table}.md`, `inference.batch_size`,",
        "`models.<m>.backend: vllm`, rule `infer`, `logs/inference/{model}/r{repeat}.log`, [top](#a-page).",
        "Bad: `workflow/scripts/no_such_script.py`, `inference.batchsize`, and rules `score_pope` and `no_such_rule`.",
        "```bash",
        "bash run.sh demo   # a comment",
        "```",
    ])
    problems = DocChecker(ROOT, planned).check("made-up.md", page)
    assert len(problems) == 3, "\n".join(problems)
    for mention, why in (("workflow/scripts/no_such_script.py", "does not exist"),
                         ("inference.batchsize", "not a key"),
                         ("no_such_rule", "no rule of that name")):
        assert any(p.startswith("made-up.md:4: ") and f"`{mention}`" in p and why in p for p in problems), problems
