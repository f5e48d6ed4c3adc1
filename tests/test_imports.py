"""Import rules, read from the source (every import statement, at module level or inside a
function): no cycles; the analysis core never imports training; the reporting side (claims,
figures, report, plots), which reads saved results only, never reaches training."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sinkprobe"
REPORTING = ("sinkprobe.claims", "sinkprobe.paper_figures", "sinkprobe.report", "sinkprobe.plots")
TRAINING = ("sinkprobe.training", "sinkprobe.runs", "sinkprobe.study", "sinkprobe.recipes")


def module_graph() -> dict[str, set[str]]:
    files = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                found |= {module, *(f"{module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        # a package and its own submodules import each other by design (__init__ re-exports)
        graph[name] = {
            m
            for m in found & files.keys()
            if m != name and not m.startswith(name + ".") and not name.startswith(m + ".")
        }
    return graph


def is_training(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TRAINING)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_the_module_graph_is_read():
    graph = module_graph()
    assert "sinkprobe.training.unlearn" in graph["sinkprobe.runs"]
    assert "sinkprobe.training.methods.base" in graph["sinkprobe.training.methods.npo"]


def test_no_import_cycles():
    graph = module_graph()
    cycles = sorted(m for m in graph if m in reachable(graph, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_analysis_core_never_imports_training():
    graph = module_graph()
    for name in (m for m in graph if m.startswith("sinkprobe.analysis")):
        bad = sorted(m for m in reachable(graph, name) if is_training(m))
        assert not bad, f"{name} reaches {bad}"


def test_reporting_reads_results_without_training():
    graph = module_graph()
    for name in (m for m in graph if m.startswith(REPORTING)):
        bad = sorted(m for m in reachable(graph, name) if is_training(m))
        assert not bad, f"{name} reaches {bad}"
