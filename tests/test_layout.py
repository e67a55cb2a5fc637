"""The house: the import graph has the layers the design card names and no cycle, rooms stay
short, the docs build, and the product's files speak of the product."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("components", "serving", "gateway", "dicom_node", "pipelines")
ROOMS = ("core", "imaging", "data", "model", "evaluation")


def test_the_import_contracts_hold():
    """.importlinter: components' rooms in layers, serving on core only, the gateway and the DICOM
    node on core and imaging only and never on TensorFlow, through imports inside functions too."""
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (module -> imported modules), or None."""
    state: dict[str, int] = {}              # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph.get(module, ())):
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state and (found := visit(other)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_import_graph_has_no_cycle_counting_imports_inside_functions():
    import grimp

    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    # a package's __init__ is not an import of its children; an import of a package is one of its __init__
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i.split(".")[0] in PACKAGES}
             for m in graph.modules}
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]      # the check sees one


def test_components_holds_the_steps_and_the_rooms_and_no_room_file_is_long():
    steps = {p.stem for p in (ROOT / "components").glob("*.py")} - {"__init__"}
    assert all(re.search(r'^if __name__ == "__main__":', (ROOT / "components" / f"{s}.py").read_text(), re.M)
               for s in steps), "every module beside the rooms is a step with a command line"
    assert {p.name for p in (ROOT / "components").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ROOMS)
    long = {p.relative_to(ROOT).as_posix(): n for room in ROOMS for p in (ROOT / "components" / room).glob("*.py")
            if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long


PROCESS_WORDS = re.compile(r"\b(issues?(?! found)|done-when|lands with|found in review)\b|\b(this|last|next|working|"
                           r"earlier|a later) (session|round|review)s?\b", re.I)
OUTSIDE_LINK = re.compile(r"\]\(\.\./")


def test_the_product_files_speak_of_the_product():
    """No issue numbers, sessions, rounds or reviews in code, docs or the README (history belongs
    in CHANGELOG.md), and nothing links outside the repository."""
    files = [p for pattern in ("components/**/*.py", "serving/**/*.py", "gateway/**/*.py", "dicom_node/**/*.py",
                               "pipelines/**/*.py", "bench/**/*.py", "tests/*.py", "docs/**/*.md", "k8s/*.yaml", "docker/*")
             for p in ROOT.glob(pattern) if p.name != "test_layout.py"] + [ROOT / "README.md", ROOT / "Makefile", ROOT / "mkdocs.yml"]
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files if p.is_file()
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if PROCESS_WORDS.search(line) or OUTSIDE_LINK.search(line)]
    assert not found, "\n".join(found[:30])


@pytest.mark.skipif(not (ROOT / "mkdocs.yml").exists(), reason="no docs site")
def test_the_docs_build_strictly(tmp_path):
    """A broken link, or a page missing from the navigation, fails the build."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").exists()


def test_the_benchmarks_page_is_generated_from_the_recorded_runs(tmp_path):
    """docs/benchmarks.md is what `python -m bench.page` makes of docs/benchmarks/history.json, and
    a benchmark's record adds a dated row with its commit and machine."""
    import json

    from bench import page

    assert page.PAGE.read_text() == page.render(json.loads(page.HISTORY.read_text())), "run python -m bench.page"
    history, out = tmp_path / "history.json", tmp_path / "page.md"
    entry = page.record("bench.example", {"p50_ms": 1.5}, "a note", history=history, page=out)
    assert entry["machine"].endswith("no GPU") or "GPU" in entry["machine"]
    row = next(line for line in out.read_text().splitlines() if "p50_ms=1.5" in line)
    assert row.startswith(f"| {entry['date'][:10]} ") and "a note" in row
