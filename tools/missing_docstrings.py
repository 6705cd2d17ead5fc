"""List public functions, methods and classes of filterprune that have no docstring.

Public: the name and every module/package on its path do not start with ``_`` (``__init__`` modules
count as their package), and methods belong to a public class. Dunder methods, property setters and
``@overload`` stubs are skipped; methods that override a documented base method are not.

    python tools/missing_docstrings.py            # one line per missing docstring, then the count
    python tools/missing_docstrings.py --count    # the count only
    python tools/missing_docstrings.py --count --package /other/checkout/src/filterprune
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "filterprune"


def _public_module(path: Path, package: Path) -> bool:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return not any(p.startswith("_") and p not in ("__init__", "__main__") for p in parts)


def _skip(node: ast.AST) -> bool:
    for d in getattr(node, "decorator_list", []):
        name = d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", "")
        if name in ("overload", "setter", "deleter"):
            return True
    return False


def missing(package: Path = PACKAGE) -> list[str]:
    """``module:qualname`` of every public definition without a docstring."""
    out = []
    for path in sorted(package.rglob("*.py")):
        if not _public_module(path, package):
            continue
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())

        def visit(body, prefix, module=module):
            for node in body:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                if node.name.startswith("_") or _skip(node):
                    continue
                qual = prefix + node.name
                if ast.get_docstring(node) is None:
                    out.append(f"{module}:{qual}")
                if isinstance(node, ast.ClassDef):
                    visit(node.body, qual + ".", module)

        visit(tree.body, "")
    return out


if __name__ == "__main__":
    names = missing(Path(sys.argv[sys.argv.index("--package") + 1]) if "--package" in sys.argv else PACKAGE)
    if "--count" not in sys.argv:
        print("\n".join(names))
    print(len(names))
