"""Public functions type their model / SAE / processor / tokenizer arguments (shared/DESIGN.md), never ``Any``."""

from __future__ import annotations

import ast

from tests.package.test_layers import module_name, package_files

SEAMS = {"model", "sae", "processor", "proc", "tokenizer", "hooked", "hf_model"}
"""Parameter names that carry a model-side object between layers."""

ALLOWED: set[tuple[str, str, str]] = set()
"""``(module, function, parameter)`` kept as ``Any`` on purpose, each with its reason. Empty: none so far."""


def _is_any(node: ast.expr | None) -> bool:
    """``Any``, ``typing.Any``, ``Any | None``, ``Optional[Any]`` (or the string form of these)."""
    if node is None:
        return False
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _is_any(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Name):
        return node.id == "Any"
    if isinstance(node, ast.Attribute):
        return node.attr == "Any"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_any(node.left) or _is_any(node.right)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Optional":
        return _is_any(node.slice)
    return False


def any_seams(tree: ast.Module, module: str) -> list[tuple[str, str, str]]:
    """``(module, function, parameter)`` for every seam parameter annotated ``Any`` in a public function or
    method (no leading underscore on it or its class) and every seam field typed ``Any`` in a public class."""
    out: list[tuple[str, str, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                for item in child.body:  # dataclass / NamedTuple fields
                    if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                            and item.target.id in SEAMS and _is_any(item.annotation)):
                        out.append((module, f"{prefix}{child.name}", item.target.id))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                if child.name.startswith("_") and child.name != "__init__":
                    continue
                a = child.args
                for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
                    if arg.arg in SEAMS and _is_any(arg.annotation):
                        out.append((module, f"{prefix}{child.name}", arg.arg))

    visit(tree, "")
    return out


def test_no_public_seam_is_typed_any() -> None:
    found = []
    for f in package_files():
        found += any_seams(ast.parse(f.read_text()), module_name(f))
    bad = sorted(set(found) - ALLOWED)
    assert not bad, (
        "public parameters typed Any (use HookedMaira2, Maira2Processor, sae_lens.SAE, "
        "PreTrainedTokenizerBase or a Protocol from sae_rad_ext.protocols):\n"
        + "\n".join(f"  {m}.{fn}({p})" for m, fn, p in bad)
    )
    stale = sorted(ALLOWED - set(found))
    assert not stale, f"allow-list entries that no longer occur (remove them): {stale}"


def test_the_check_sees_an_any_seam() -> None:
    src = (
        "from typing import Any, Optional\n"
        "def run(model: Any, sae: 'Any | None' = None, n: Any = 1): ...\n"
        "def _private(model: Any): ...\n"
        "def typed(model: HookedMaira2, processor: Optional[Any] = None): ...\n"
        "class _Hidden:\n    def go(self, sae: Any): ...\n"
        "class Ctx:\n    hooked: Any\n    def __init__(self, tokenizer: Any): ...\n"
    )
    got = any_seams(ast.parse(src), "m")
    assert sorted(got) == [
        ("m", "Ctx", "hooked"),
        ("m", "Ctx.__init__", "tokenizer"),
        ("m", "run", "model"),
        ("m", "run", "sae"),
        ("m", "typed", "processor"),
    ]
