"""The package's shape: each part imports only parts below it, there are no import cycles, and the
numpy-only parts load without PyTorch (the device install has none)."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import edgelearn

ROOT = Path(edgelearn.__file__).parent
# bottom to top; a part may import its own layer's parts and any below
LAYERS = [
    {"__init__", "errors", "labels", "files", "lazy", "resources"},  # __init__ names its parts lazily, importing none
    {"learners", "data", "store", "runtime"},
    {"knowledge", "backbones"},
    {"explain", "recognizer", "plant"},
    {"evaluation"},
    {"training", "server"},
    {"inspection", "detection", "federation"},
    {"cli", "__main__"},
]


def part(module: str) -> str:
    """``edgelearn.knowledge.package`` -> ``knowledge``; ``edgelearn`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports() -> dict[str, set[str]]:
    """Module -> the edgelearn modules it imports anywhere in its code (function-level included)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        name = ".".join(("edgelearn", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgelearn"):
                graph[name].add(node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.startswith("edgelearn"))
    return graph


def test_every_part_has_a_layer():
    parts = {part(m) for m in imports()} | {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
                                            if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert parts <= set().union(*LAYERS), f"add to LAYERS: {sorted(parts - set().union(*LAYERS))}"


def test_no_part_imports_a_layer_above_it():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    upward = sorted(f"{m} -> {t}" for m, targets in imports().items() for t in targets
                    if layer[part(t)] > layer[part(m)])
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_parts_import_no_cycle():
    graph = defaultdict(set)
    for m, targets in imports().items():
        graph[part(m)].update(part(t) for t in targets if part(t) != part(m))
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_learners_and_knowledge_need_numpy_only():
    code = ("import sys, edgelearn, edgelearn.learners, edgelearn.knowledge, edgelearn.labels; "
            "print(sorted(m for m in ('torch', 'torchvision', 'PIL', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles among modules (a package's ``__init__`` re-exporting its own modules is no cycle: they never
    import the package back by its bare name)."""
    cycles, done, stack = [], set(), []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    return cycles


def test_the_training_modules_import_no_cycle():
    """Fine-tuning and the distributed modes once imported each other (at function level); one dispatcher
    (training.run) now imports both, and the modes import the fine-tuning job, never the other way."""
    graph = {m: {t for t in targets if t.startswith("edgelearn.training")}
             for m, targets in imports().items() if m.startswith("edgelearn.training")}
    assert not module_cycles(graph), module_cycles(graph)
    assert "edgelearn.training.distributed" not in graph["edgelearn.training.finetune"]
