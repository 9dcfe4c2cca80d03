"""The documents: figures generated from the results files, every file's metadata, links, the README's length.

Every table in README.md, docs/*.md and benchmarks/results/README.md is written
by benchmarks/tables.py from the files under benchmarks/results/; these tests
fail when one of them no longer matches its files (`python benchmarks/tables.py`
rewrites them), when a results file lacks its command, commit, date or machine,
when a link between the documents points nowhere, and when the README outgrows
a ten-minute read.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README_MAX_WORDS = 2500


def load_tables():
    """benchmarks/tables.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cifarkit_doc_tables", REPO / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _CifarkitInProcess:
    """``subprocess`` as benchmarks/tables.py sees it in these tests: its ``python -m cifarkit ARGS`` (``cifarkit
    recipes -v``) runs ``cifarkit.cli.main(ARGS)`` in this process, printing the same lines without starting another
    Python with torch (seconds); any other command runs as it would."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def run(command, **kwargs) -> subprocess.CompletedProcess:
        if list(command[:3]) != [sys.executable, "-m", "cifarkit"]:
            return subprocess.run(command, **kwargs)
        from cifarkit.cli import main

        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(command[3:]))
            except SystemExit as exc:
                code = exc.code or 0
        if code and kwargs.get("check"):
            raise subprocess.CalledProcessError(code, command, out.getvalue(), err.getvalue())
        return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def tables():
    module = load_tables()
    module.subprocess = _CifarkitInProcess()
    return module


def test_tables_match_the_results_files(tables):
    stale = tables.stale()
    assert not stale, "out of date (run `python benchmarks/tables.py`): " + "; ".join(stale)


def test_every_results_file_records_command_commit_date_and_machine(tables):
    assert tables.metadata_problems() == []


def test_readme_is_a_ten_minute_read():
    words = len((REPO / "README.md").read_text().split())  # as `wc -w` counts
    assert words <= README_MAX_WORDS, f"README.md has {words} words; at most {README_MAX_WORDS}: move detail to docs/"


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "results" / "README.md"]


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_links_between_the_documents_resolve(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def test_a_stale_table_is_found_and_rewritten(tables):
    text = "before\n<!-- table:scaling -->\ntyped by hand\n<!-- /table -->\nafter\n"
    rewritten, changed = tables.render(text)
    assert changed == ["scaling"]
    assert "typed by hand" not in rewritten and "scaling_fast90.json" in rewritten
    assert rewritten.startswith("before\n") and rewritten.endswith("<!-- /table -->\nafter\n")
    assert tables.render(rewritten)[1] == []


def test_a_new_benchmark_file_shows_up_with_its_machine(tables, tmp_path, monkeypatch):
    """What the lead's new measurements go through: a benchmark's JSON, no index entry, a row of the recipes table."""
    results = tmp_path / "results"
    (results / "new").mkdir(parents=True)
    (results / "index.json").write_text(json.dumps({"machines": {}, "files": {}}))
    recipe = tables.current_recipes()["fast93"]
    machine = {
        "cpu_model": "Intel(R) Xeon(R) Processor",
        "cpu_kind": "native bf16 (AMX)",
        "cores": 16,
        "threads": 16,
        "torch": "2.13.0+cpu",
        "matmul_gflops": {"float32": 1234.5, "bfloat16": 5678.9},
    }
    result = {
        "command": "python benchmarks/time_to_accuracy.py --recipe fast93 --runs 2",
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "dirty": False,
        "date": "2026-12-02T10:00:00+00:00",
        "machine": machine,
        "recipe": {k: v for k, v in recipe.items() if k != "compute"},
        "runs": [
            {"seed": 0, "wall_seconds": 300.0, "bf16": True, "test_acc": 0.93, "test_acc_tta": 0.94},
            {"seed": 1, "wall_seconds": 306.0, "bf16": True, "test_acc": 0.931, "test_acc_tta": 0.942},
        ],
    }
    (results / "new" / "tta.json").write_text(json.dumps(result))
    (results / "new" / "tta.txt").write_text("what it printed\n")
    monkeypatch.setattr(tables, "RESULTS", results)
    monkeypatch.setattr(tables, "INDEX", results / "index.json")
    for cached in (tables.index, tables.read_json, tables._measurements):
        cached.cache_clear()
    try:
        assert tables.metadata_problems() == []  # the .txt belongs to the JSON beside it
        rows = [line for line in tables.recipes_table().splitlines() if "new/tta.json" in line]
        assert len(rows) == 1
        row = rows[0]
        assert "94.10 ± 0.14 (2 seeds)" in row and "5.0, 5.1" in row and "bf16" in row
        assert "Intel Xeon (AMX), 16 of 16 cores" in row and "1,234 / 5,679" in row
        assert "| — |" in row  # the recipe as it is today
        assert "not measured" in tables.recipes_table()  # recipes without a file
    finally:
        for cached in (tables.index, tables.read_json, tables._measurements):
            cached.cache_clear()
