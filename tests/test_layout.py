"""The package's dependency rules: runtime/ never imports training/; kernels/ imports nothing
else from ctrlgan."""

import ast
import subprocess
import sys
from pathlib import Path

import ctrlgan

PACKAGE = Path(ctrlgan.__file__).parent


def test_runtime_never_imports_training():
    code = (
        "import sys, ctrlgan; ctrlgan.load('digits').sample(classes=1, n=2); "
        "print(' '.join(m for m in sys.modules if m.startswith('ctrlgan')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(out.stdout.split())
    assert "ctrlgan.runtime.generator" in modules
    assert not [m for m in modules if m.startswith("ctrlgan.training")]


def ctrlgan_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n == "ctrlgan" or n.startswith("ctrlgan.")}


def test_kernels_import_nothing_else_from_ctrlgan():
    files = list((PACKAGE / "kernels").glob("*.py"))
    assert files
    for f in files:
        others = {m for m in ctrlgan_imports(f) if not m.startswith("ctrlgan.kernels")}
        assert not others, (f.name, others)


def test_export_and_runtime_follow_the_data_flow():
    """training -> artifact -> export -> runtime: export never imports training or runtime, and
    runtime never imports training (statically, not only on the sampling path)."""
    for folder, banned in (("export", ("ctrlgan.training", "ctrlgan.runtime")),
                           ("runtime", ("ctrlgan.training",))):  # fmt: skip
        files = list((PACKAGE / folder).glob("*.py"))
        assert files
        for f in files:
            bad = {m for m in ctrlgan_imports(f) if m.startswith(banned)}
            assert not bad, (folder, f.name, bad)
