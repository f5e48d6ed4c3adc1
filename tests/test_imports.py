"""Import rules, read from the source (every import statement, at module level or inside a
function): no cycles; the analysis core never reaches training or the pipeline; the reporting
side (claims, figures, report, plots), which reads saved results only, never reaches training
or the pipeline; only the pipeline imports training and analysis together."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sinkprobe"
REPORTING = ("sinkprobe.reporting", "sinkprobe.plots")
TRAINING = ("sinkprobe.training",)
PIPELINE = ("sinkprobe.pipeline",)


def module_graph(through_packages: bool = False) -> dict[str, set[str]]:
    """Module → the package modules it imports. A package and its own submodules import each
    other by design (``__init__`` re-exports), so those edges are left out for the cycle check;
    ``through_packages`` keeps a package's imports of its submodules (what importing it runs),
    for the rules on what a module reaches."""
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
        own = (lambda m: m.startswith(name + ".")) if through_packages else (lambda m: False)
        graph[name] = {
            m
            for m in found & files.keys()
            if m != name and (own(m) or not m.startswith(name + ".")) and not name.startswith(m + ".")
        }
    return graph


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == t or module.startswith(t + ".") for t in packages)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_the_module_graph_is_read():
    graph = module_graph()
    assert "sinkprobe.training.unlearn" in graph["sinkprobe.pipeline.runs"]
    assert "sinkprobe.training.methods.base" in graph["sinkprobe.training.methods.npo"]


def test_no_import_cycles():
    graph = module_graph()
    cycles = sorted(m for m in graph if m in reachable(graph, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_analysis_core_never_reaches_training_or_the_pipeline():
    graph = module_graph(through_packages=True)
    for name in (m for m in graph if within(m, ("sinkprobe.analysis",))):
        bad = sorted(m for m in reachable(graph, name) if within(m, TRAINING + PIPELINE))
        assert not bad, f"{name} reaches {bad}"


def test_reporting_reads_results_without_training_or_the_pipeline():
    graph = module_graph(through_packages=True)
    for name in (m for m in graph if within(m, REPORTING)):
        bad = sorted(m for m in reachable(graph, name) if within(m, TRAINING + PIPELINE))
        assert not bad, f"{name} reaches {bad}"


def test_only_the_pipeline_imports_training_and_analysis_together():
    graph = module_graph()
    for name, imports in graph.items():
        if within(name, PIPELINE) or name == "sinkprobe.cli":
            continue
        both = any(within(m, TRAINING) for m in imports) and any(within(m, ("sinkprobe.analysis",)) for m in imports)
        assert not both, f"{name} imports training and analysis together: that is the pipeline's job"
