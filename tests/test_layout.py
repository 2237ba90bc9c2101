"""The code's shape, checked: layers import downwards only, no import circle, no function in
src/ over 100 lines."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# lower number = lower layer; a module may import from a lower layer or from its own package
LAYERS = {"tpn.errors": 0, "tpn.config": 1, "tpn.options": 1, "tpn.bench": 1, "tpn.pickle_scan": 1, "tpn.data": 2, "tpn.models": 2,
          "tpn.checkpoint": 2, "tpn.convert": 3, "tpn.accel": 3, "tpn.engine": 4, "tpn.zoo": 4,
          "tpn.cli": 5}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted((SRC / "tpn").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    """tpn modules a module imports anywhere in its code (function-level imports included)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("tpn.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tpn"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return out


def _layer(module: str) -> tuple[str, int]:
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    raise AssertionError(f"{module}: not in a layer; add it to LAYERS")


def test_imports_go_down_the_layers_and_never_in_a_circle():
    mods = _modules()
    graph = {m: _imports(t, set(mods)) - {"tpn"} for m, t in mods.items() if m != "tpn"}  # `tpn`: the facade
    upward = [f"{m} -> {i}" for m, deps in graph.items() for i in deps
              if _layer(i)[0] != _layer(m)[0] and _layer(i)[1] >= _layer(m)[1]]
    assert not upward, upward
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for i in graph.get(m, ()):
            assert state.get(i) != 1, "import circle: " + " -> ".join(path + [i])
            if i not in state:
                visit(i, path + [i])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_function_over_100_lines():
    long = [f"{name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, tree in _modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 100]
    assert not long, long


def test_code_names_no_machine_paths_dates_or_project_history():
    """Numbers with dates live in docs/ and benchmarks/results; "the seed's" (project history,
    and a clash with the RNG seed) is spelt out as what it means, e.g. the Paddle recipe."""
    import re

    bad = re.compile(r"/(work|home|tmp)/|\b20\d\d-\d\d-\d\d\b|\bseed's\b")
    found = [f"{p.relative_to(SRC)}:{n}: {line.strip()}" for p in sorted((SRC / "tpn").rglob("*"))
             if p.suffix in (".py", ".yaml") for n, line in enumerate(p.read_text().splitlines(), 1)
             if bad.search(line)]
    assert not found, found
