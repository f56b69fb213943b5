"""docs/onnx.md runs as written: its NumPy noise is the Philox contract (the integer stage bit for
bit against kernels.reference.philox, the floats equal to ctrlgan.noise), and its plain
onnxruntime example gives the onnxruntime backend's images, without importing ctrlgan.

The page's code blocks are the fenced ```python blocks preceded by ``<!-- test: NAME -->``; they
run in one namespace, in the page's order, as a reader would run them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ctrlgan
from ctrlgan.artifact import BUNDLED_DIR
from ctrlgan.kernels import reference
from ctrlgan.runtime import philox

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "onnx.md"
MODEL = BUNDLED_DIR / "mnist"
DOC_PATH = '"ctrlgan/models/mnist/generator.onnx"'  # the path the page uses, from a checkout
BLOCK = re.compile(r"<!-- test: (\w+) -->\n```python\n(.*?)```", re.DOTALL)


def blocks() -> dict[str, str]:
    found = dict(BLOCK.findall(DOC.read_text()))
    assert set(found) == {"metadata", "noise", "sample", "mix"}, sorted(found)
    return found


def with_model_path(text: str) -> str:
    """A block with the page's checkout-relative graph path replaced by the bundled one's."""
    return text.replace(DOC_PATH, repr(str(MODEL / "generator.onnx")))


def run(*names: str) -> dict:
    """Execute the named blocks in one fresh namespace, in order."""
    code = blocks()
    namespace: dict = {"__name__": "onnx_md"}
    for name in names:
        text = with_model_path(code[name])
        exec(compile(text, f"docs/onnx.md:{name}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> dict:
    """The noise, sample and mix blocks, run in a scratch directory (the PNG lands there)."""
    cwd = tmp_path_factory.mktemp("onnx_md")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        namespace = run("noise", "sample", "mix")
    namespace["cwd"] = cwd
    return namespace


@pytest.fixture(scope="module")
def generator():
    return ctrlgan.load("mnist", backend="onnxruntime")


def random_seeds(rng: np.random.Generator, n: int) -> list[int]:
    """n fresh 64-bit seeds, and the edges: 0, 2**63 (negative as int64), 2**64 - 1."""
    fresh = [int(s) for s in rng.integers(0, 2**64, n, dtype=np.uint64)]
    return [*fresh, 0, 2**63, 2**63 + int(rng.integers(1, 2**62)), 2**64 - 1]


def test_code_imports_numpy_onnxruntime_and_pil_only():
    code = blocks()
    assert all(DOC_PATH in code[name] for name in ("metadata", "sample"))
    imports = {
        name: re.findall(r"^\s*(?:import|from)\s+([\w.]+)", text, re.MULTILINE)
        for name, text in code.items()
    }
    assert imports["noise"] == ["numpy"]  # self-contained: nothing else
    assert set(imports["sample"]) == {"numpy", "onnxruntime", "PIL"}
    assert set(imports["metadata"]) == {"json", "onnx", "onnxruntime"}
    assert imports["mix"] == []  # continues the sample block
    for text in code.values():
        assert not re.search(r"\bimport\s+ctrlgan|\bfrom\s+ctrlgan", text)
    # ~40 readable lines for the whole contract
    lines = [x for x in code["noise"].splitlines() if x.strip()]
    assert len(lines) <= 45, len(lines)


@pytest.mark.parametrize("z_dim", [1, 13, 64])
@pytest.mark.parametrize("n", [1, 7])
def test_philox_words_bit_exact_with_reference(page, n, z_dim):
    rng = np.random.default_rng()
    seeds = random_seeds(rng, n)
    # counters j, the redraw counters j + r Z, and counters near 2**32 (wrapping)
    counters = np.concatenate(
        [np.arange(z_dim), np.arange(z_dim) + 3 * z_dim, rng.integers(2**32 - 64, 2**32, 8)]
    ).astype(np.uint64)
    words = page["philox"](np.array(seeds, np.uint64).reshape(-1, 1), counters)
    expected = reference.philox(
        reference.seeds_to_int64(seeds).reshape(-1, 1),
        torch.from_numpy(counters.astype(np.int64)),
    )
    for got, want in zip(words, expected, strict=True):
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got, want.numpy().astype(np.uint64))


@pytest.mark.parametrize("truncation", [None, 0.5, 1.5])
@pytest.mark.parametrize("z_dim", [13, 64])
@pytest.mark.parametrize("n", [1, 7])
def test_noise_equals_ctrlgan_noise(page, n, z_dim, truncation):
    seeds = random_seeds(np.random.default_rng(), n)
    z = page["noise"](seeds, z_dim, truncation)
    assert z.dtype == np.float32 and z.shape == (len(seeds), z_dim)
    expected = ctrlgan.noise(seeds, z_dim, truncation)
    if philox.IMPLEMENTATION == "c":
        # the same float steps as the C loop (log and cos in float64, rounded): bit for bit
        np.testing.assert_array_equal(z, expected)
    # the contract's tolerance, against the torch reference that defines it
    torch_ref = philox.reference_normal(np.array(seeds, np.uint64), z_dim, truncation)
    assert np.abs(z - torch_ref).max() <= 1e-6
    if truncation is not None:
        assert np.abs(z).max() <= np.float32(truncation)


def test_sample_gives_the_backend_images(page, generator):
    np.testing.assert_array_equal(
        page["images"], generator.sample(classes=[3, 3, 7, 9], seeds=[0, 1, 2, 2**64 - 1])
    )
    np.testing.assert_array_equal(
        page["steered"],
        generator.sample(classes=[3, 3], seeds=[5, 5], steer={"thickness": [0, 2.0]}),
    )
    assert np.abs(page["steered"][1] - page["steered"][0]).max() > 0.1  # steering did something
    np.testing.assert_array_equal(
        page["truncated"], generator.sample(classes=[3, 3], seeds=[0, 1], truncation=1.0)
    )
    # the PNG strip is the images' uint8 pixels side by side
    png = np.asarray(Image.open(page["cwd"] / "samples.png"))
    pixels = ctrlgan.to_uint8(page["images"])[..., 0]
    np.testing.assert_array_equal(png, np.concatenate(list(pixels), axis=1))


def test_mix_gives_the_backend_interpolation(page, generator):
    expected = generator.interpolate((5, 3), (9, 8), steps=5, method="lerp")
    np.testing.assert_array_equal(page["strip"], expected)


def test_example_runs_without_ctrlgan(tmp_path):
    """The noise and sample blocks as one script, in a process where ``import ctrlgan`` fails."""
    code = blocks()
    script = "import sys\nsys.modules['ctrlgan'] = None  # any import of ctrlgan now fails\n"
    script += code["noise"] + with_model_path(code["sample"])
    script += "assert not any(m.startswith('ctrlgan') for m in sys.modules if sys.modules[m])\n"
    script += "np.save('images.npy', images)\n"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "samples.png").is_file()
    assert np.load(tmp_path / "images.npy").shape == (4, 1, 28, 28)


def test_metadata_matches_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = run("metadata")
    manifest = json.loads((MODEL / "manifest.json").read_text())
    assert meta["meta"] == dict(meta["meta_ort"])
    assert meta["classes"] == manifest["classes"]
    assert meta["features"] == manifest["directions"]
    assert meta["z_dim"] == manifest["z_dim"]
    assert meta["image_shape"] == manifest["image_shape"]
    assert meta["value_range"] == manifest["value_range"] == [-1.0, 1.0]
    assert meta["meta"]["ctrlgan.noise"].strip()
