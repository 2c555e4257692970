"""Dependencies point one way, down the data flow (shared/DESIGN.md): no module imports a layer above it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Lower rank = lower layer. A module may import its own layer and any layer of lower rank.
# Layers of equal rank are independent of each other (e.g. interpret and maps).
RANK: dict[str, float] = {
    "errors": 0,
    "util": 0,
    "evaluation.metrics": 0,
    "evaluation.splits": 0,
    "kernels": 1,
    "adapters": 2,
    "data": 2,
    "protocols": 2.5,  # type seams: above adapters (it names their classes), below every other layer
    "records": 3,
    "activations": 4,
    "saes": 5,
    "training": 6,
    "interpret": 7,
    "maps": 7,
    "steering": 8,
    "evaluation": 8,
    "evaluation.phantom_benchmark": 8,
    "publish": 9,
    "demo": 10,
    "cli": 11,
    "__init__": 12,
    "__main__": 12,
}


def layer_of(module: str) -> str:
    """The layer of a dotted module name under ``sae_rad_ext`` (``sae_rad_ext.steering.steer`` → ``steering``)."""
    parts = module.split(".")[1:]
    if not parts:
        return "__init__"
    two = ".".join(parts[:2])
    return two if two in RANK else parts[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("kernels", "adapters"):  # installed as sae_rad_ext.kernels / sae_rad_ext.adapters
        parts = ["sae_rad_ext", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, me: str) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level:
                base = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                out.append(".".join([*base, node.module]))
            else:
                out.append(node.module)
                out += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("sae_rad_ext.")]


def package_files() -> list[Path]:
    return sorted(
        [*(ROOT / "sae_rad_ext").rglob("*.py"), *(ROOT / "kernels").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")]
    )


def upward_imports() -> list[tuple[str, str]]:
    bad = []
    for f in package_files():
        me = module_name(f)
        mine = layer_of(me)
        assert mine in RANK, f"{f}: layer {mine!r} has no rank in tests/package/test_layers.py; add it"
        for target in imported_modules(f, me):
            theirs = layer_of(target)
            if theirs not in RANK:
                continue
            if RANK[theirs] > RANK[mine] or (RANK[theirs] == RANK[mine] and theirs != mine):
                bad.append((me, target))
    return sorted(set(bad))


def test_no_module_imports_a_layer_above_it() -> None:
    bad = upward_imports()
    assert not bad, "upward imports:\n" + "\n".join(f"  {a} imports {b}" for a, b in bad)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # The checker itself must flag a planted violation, or the test above proves nothing.
    fake = tmp_path / "sae_rad_ext" / "interpret" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from sae_rad_ext.publish.html import build_site\nfrom sae_rad_ext.data import Study\n")
    me = "sae_rad_ext.interpret.x"
    targets = imported_modules(fake, me)
    flagged = [t for t in targets if RANK[layer_of(t)] > RANK[layer_of(me)]]
    assert flagged and all(t.startswith("sae_rad_ext.publish") for t in flagged)
    assert layer_of("sae_rad_ext.evaluation.metrics") == "evaluation.metrics"
    assert layer_of("sae_rad_ext.evaluation.phantom_benchmark") == "evaluation.phantom_benchmark"


def test_records_is_neutral() -> None:
    # records.py is the contract between interpret and publish: it imports neither.
    targets = imported_modules(ROOT / "sae_rad_ext" / "records.py", "sae_rad_ext.records")
    assert not [t for t in targets if layer_of(t) in {"interpret", "publish", "steering", "maps", "demo", "cli"}]
