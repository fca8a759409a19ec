"""A finished run moves with its project folder: nothing in params or inputs may be an absolute path of the
checkout, or a moved or re-cloned project would rerun scoring and everything after it."""

from __future__ import annotations

import shutil

from conftest import copy_project, planned_rules, run_snakemake


def test_moved_project_plans_nothing(tmp_path):
    project = copy_project(tmp_path / "first")
    # A completed demo run faked cheaply: every output created empty, then --touch records each job's metadata.
    summary = run_snakemake(project, "--summary", project=project, timeout=300)
    for line in summary.stdout.splitlines()[1:]:
        path = line.split("\t")[0]
        if path:
            target = project / path
            if path.startswith("resources/demo/") and target.suffix == "":  # directory() outputs
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
    run_snakemake(project, "--touch", "--forceall", project=project, timeout=300)
    assert planned_rules(run_snakemake(project, "-n", "--quiet=progress", project=project).stdout) == []
    moved = tmp_path / "elsewhere" / "second"
    moved.parent.mkdir()
    shutil.move(project, moved)
    proc = run_snakemake(moved, "-n", "--quiet=progress", project=moved, timeout=300)
    assert planned_rules(proc.stdout) == [], proc.stdout[-3000:]
