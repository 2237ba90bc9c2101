"""The code's shape, checked: no function in src/ over 100 lines."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tpn"


def _functions():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(SRC.parent), node


def test_no_function_over_100_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in _functions() if node.end_lineno - node.lineno + 1 > 100]
    assert not long, long
