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
    """training -> artifact -> export -> runtime -> serve: export never imports training or
    runtime, runtime never imports training or serve, serve never imports training, export or
    the CLI (statically, not only on the sampling path)."""
    rules = (
        ("export", ("ctrlgan.training", "ctrlgan.runtime")),
        ("runtime", ("ctrlgan.training", "ctrlgan.serve")),
        ("serve", ("ctrlgan.training", "ctrlgan.export", "ctrlgan.cli")),
    )
    for folder, banned in rules:
        files = list((PACKAGE / folder).glob("*.py"))
        assert files
        for f in files:
            bad = {m for m in ctrlgan_imports(f) if m.startswith(banned)}
            assert not bad, (folder, f.name, bad)


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_sampling_on_onnxruntime_never_imports_torch():
    """Cold start: import, load, sample (from seeds, and from given z cast from float16),
    interpolate, noise and the batcher on onnxruntime (and "auto", which picks it on a
    machine without CUDA) pay for neither torch nor onnx."""
    code = (
        "import ctrlgan\n"
        "g = ctrlgan.load('digits', backend='onnxruntime')\n"
        "g.sample(classes=[1, 2], seeds=[3, 4], steer={'thickness': 1.0}, truncation=1.5)\n"
        "g.sample(classes=3, z=ctrlgan.noise([3, 4], g.z_dim).astype('float16'))\n"
        "g.interpolate((5, 3), (9, 7), steps=4, method='slerp')\n"
        "g.traverse(1, 3, 'slant', [-1, 0, 1])\n"
        "ctrlgan.noise([0, 1], 8)\n"
        "with ctrlgan.BatchingGenerator(g) as b: b.sample(classes=3, seeds=[7])\n"
    )
    modules = _modules_after(code)
    assert "ctrlgan.runtime.ort" in modules
    assert "torch" not in modules and "onnx" not in modules
    from ctrlgan.runtime import cuda

    if not cuda.available():
        auto = _modules_after("import ctrlgan; ctrlgan.load('digits').sample(classes=3, n=2)")
        assert "torch" not in auto


def test_the_cli_parser_imports_neither_torch_nor_onnxruntime():
    modules = _modules_after("from ctrlgan.cli import build_parser; build_parser()")
    assert "ctrlgan.cli.train" in modules
    assert not {"torch", "onnxruntime", "onnx", "ctrlgan.training.train"} & modules


def test_the_server_never_imports_training_or_torch():
    """A server needs the runtime only: building the app and answering a request on
    onnxruntime imports neither ctrlgan.training nor torch."""
    code = (
        "import asyncio, ctrlgan.serve\n"
        "app = ctrlgan.serve.create_app(['digits'], backend='onnxruntime')\n"
        "from ctrlgan.serve.grpc import Service\n"
        "Service(app)\n"
        "sent = []\n"
        "async def receive(): return {'type': 'http.request', 'body': b''}\n"
        "async def send(m): sent.append(m)\n"
        "scope = {'type': 'http', 'method': 'GET', 'path': '/v1/models/digits/image.png',\n"
        "         'query_string': b'class=3&seed=7', 'headers': []}\n"
        "asyncio.run(app(scope, receive, send))\n"
        "assert sent[0]['status'] == 200, sent\n"
        "app.close()\n"
    )
    modules = _modules_after(code)
    assert "ctrlgan.serve.app" in modules and "ctrlgan.serve.grpc" in modules
    assert not {m for m in modules if m.startswith("ctrlgan.training")}
    assert "torch" not in modules
