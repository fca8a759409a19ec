"""The layout a newcomer reads: workflow/scripts/ holds only the rule scripts, each named after its rule and thin;
the library is one package (workflow/lib/pii/) with one folder per stage, each saying what it does; rule files hold
rules and common.smk only the shared wiring."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from conftest import LIB, ROOT

RULES = ROOT / "workflow" / "rules"
SCRIPTS = ROOT / "workflow" / "scripts"
STAGES = ("core", "data", "render", "inference", "tasks", "scoring", "analysis", "report")


def script_rules() -> dict[str, str]:
    """rule name -> the script its ``script:`` directive names."""
    found = {}
    for smk in RULES.glob("*.smk"):
        text = smk.read_text(encoding="utf-8")
        for block in re.split(r"^(?=rule \w+:)", text, flags=re.M):
            rule = re.match(r"rule (\w+):", block)
            script = re.search(r'^    script:\n\s+"\.\./scripts/([\w/]+\.py)"', block, re.M)
            if rule and script:
                found[rule.group(1)] = script.group(1)
    return found


def test_scripts_folder_holds_only_rule_scripts_named_after_their_rule():
    rules = script_rules()
    assert rules, "no script: directive found; update this test"
    assert {name: script for name, script in rules.items() if script != f"{name}.py"} == {}
    on_disk = sorted(p.relative_to(SCRIPTS).as_posix() for p in SCRIPTS.rglob("*.py"))
    assert on_disk == sorted(rules.values()), "workflow/scripts/ holds a file no rule runs (library code goes in " \
                                              "workflow/lib/pii/)"


def test_rule_scripts_are_thin():
    """A rule script reads its named params and calls the library: at most a main() and no other function or class,
    and short."""
    for script in SCRIPTS.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        tree = ast.parse(text)
        defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert defs == ["main"], f"{script.name}: {defs}"
        assert len(text.splitlines()) <= 30, f"{script.name}: {len(text.splitlines())} lines"
        imports = [n.module for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert any(m and m.startswith("pii.") for m in imports), f"{script.name} calls no library module"


def test_one_package_one_folder_per_stage_each_saying_what_it_does():
    package = LIB / "pii"
    assert sorted(p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(STAGES)
    for stage in STAGES:
        init = package / stage / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and 2 <= len(doc.splitlines()) <= 3, f"{init}: a docstring of at most three lines"


def test_rule_files_hold_no_functions_and_common_holds_no_rules():
    """Stage input functions live in the package (pii/<stage>/dag.py): snakemake --lint flags a rule file with
    both rules and functions, and common.smk keeps only the wiring every stage needs."""
    for smk in RULES.glob("*.smk"):
        text = smk.read_text(encoding="utf-8")
        if smk.name == "common.smk":
            assert not re.search(r"^rule ", text, re.M)
        else:
            assert not re.search(r"^def ", text, re.M), f"{smk.name} defines a function"


def test_importing_the_package_and_the_image_loader_imports_nothing_heavy():
    """The Snakefile imports the config checks and the study; vLLM's environment (no polars) imports
    pii.core.images in its worker: neither may pull polars, torch or transformers."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import pii, pii.core.images, pii.core.config, "
            "pii.core.study, pii.inference.families, pii.tasks; "
            "print(sorted(m for m in ('polars', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(LIB)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
