"""Every text file the workflow opens names its encoding: under an ASCII locale (LANG=C without UTF-8 mode on
some clusters) Python's default would turn a question with 'é' into a UnicodeDecodeError traceback."""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT

# the rule scripts and the library
SCRIPTS = sorted((ROOT / "workflow" / "scripts").rglob("*.py")) + sorted((ROOT / "workflow" / "lib").rglob("*.py"))


def text_opens_without_encoding(tree: ast.AST):
    """(line, call) of open()/Path.open()/read_text()/write_text() calls in text mode with no encoding."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        keywords = {k.arg for k in node.keywords}
        if "encoding" in keywords:
            continue
        if name in ("read_text", "write_text"):
            yield node.lineno, name
        elif name == "open" and not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                                     and func.value.id in ("Image", "os", "zipfile", "archive", "tarfile")):
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            binary = isinstance(mode, ast.Constant) and isinstance(mode.value, str) and "b" in mode.value
            if not binary and not isinstance(mode, ast.Name):  # a mode passed through is checked where it is set
                yield node.lineno, name


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.relative_to(ROOT / "workflow").as_posix() for p in SCRIPTS])
def test_text_files_are_opened_with_an_encoding(script):
    found = list(text_opens_without_encoding(ast.parse(script.read_text(encoding="utf-8"))))
    assert found == [], f"{script.name}: text I/O without encoding= at lines {[line for line, _ in found]}"


def rule_scripts() -> list[str]:
    """Every script a rule runs through Snakemake's ``script:`` directive."""
    import re

    names = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        names |= set(re.findall(r'"\.\./scripts/([\w/]+\.py)"', smk.read_text(encoding="utf-8")))
    return sorted(names)


@pytest.mark.parametrize("name", rule_scripts())
def test_rule_scripts_have_no_future_import(name):
    """Snakemake puts its preamble before a rule script's first line, so a ``from __future__`` import there is a
    SyntaxError when the rule runs (library modules the scripts import may have one)."""
    tree = ast.parse((ROOT / "workflow" / "scripts" / name).read_text(encoding="utf-8"))
    assert not [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"], name
