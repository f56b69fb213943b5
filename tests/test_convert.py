"""ctrlgan convert course: the source course's conditional generator, saved the course's way,
becomes an artifact whose every backend draws what the source module draws."""

import hashlib
import json
import pickle
import secrets

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ctrlgan
from ctrlgan.artifact import GENERATOR_WEIGHTS, MANIFEST, Artifact
from ctrlgan.convert import convert_course, parse_classes
from ctrlgan.errors import ArtifactError, InvalidRequest
from ctrlgan.network import ConditionalGenerator, GeneratorConfig
from tests.test_cli import assert_one_line_error, run


# The source's module, as the course's notebook defines it (C1W4 "Build a Conditional GAN").
class Generator(nn.Module):
    def __init__(self, input_dim=10, im_chan=1, hidden_dim=64):
        super(Generator, self).__init__()  # noqa: UP008 (verbatim)
        self.input_dim = input_dim
        self.gen = nn.Sequential(
            self.make_gen_block(input_dim, hidden_dim * 4),
            self.make_gen_block(hidden_dim * 4, hidden_dim * 2, kernel_size=4, stride=1),
            self.make_gen_block(hidden_dim * 2, hidden_dim),
            self.make_gen_block(hidden_dim, im_chan, kernel_size=4, final_layer=True),
        )

    def make_gen_block(
        self, input_channels, output_channels, kernel_size=3, stride=2, final_layer=False
    ):
        if not final_layer:
            return nn.Sequential(
                nn.ConvTranspose2d(input_channels, output_channels, kernel_size, stride),
                nn.BatchNorm2d(output_channels),
                nn.ReLU(inplace=True),
            )
        else:
            return nn.Sequential(
                nn.ConvTranspose2d(input_channels, output_channels, kernel_size, stride),
                nn.Tanh(),
            )

    def forward(self, noise):
        x = noise.view(len(noise), self.input_dim, 1, 1)
        return self.gen(x)


class Discriminator(nn.Module):
    def __init__(self, im_chan=1, hidden_dim=64):
        super(Discriminator, self).__init__()  # noqa: UP008 (verbatim)
        self.disc = nn.Sequential(
            self.make_disc_block(im_chan, hidden_dim),
            self.make_disc_block(hidden_dim, hidden_dim * 2),
            self.make_disc_block(hidden_dim * 2, 1, final_layer=True),
        )

    def make_disc_block(
        self, input_channels, output_channels, kernel_size=4, stride=2, final_layer=False
    ):
        if not final_layer:
            return nn.Sequential(
                nn.Conv2d(input_channels, output_channels, kernel_size, stride),
                nn.BatchNorm2d(output_channels),
                nn.LeakyReLU(0.2, inplace=True),
            )
        else:
            return nn.Sequential(nn.Conv2d(input_channels, output_channels, kernel_size, stride))

    def forward(self, image):
        disc_pred = self.disc(image)
        return disc_pred.view(len(disc_pred), -1)


def source_generator(input_dim: int, im_chan: int = 1, hidden_dim: int = 8) -> Generator:
    """The source's generator as if trained, in eval mode: fresh random weights and biases, and
    BatchNorm statistics measured on a random batch then perturbed (so that activations stay
    at the scale a trained network's do, and no statistic is at its initial zeros and ones)."""
    torch.manual_seed(secrets.randbits(32))
    gen = Generator(input_dim, im_chan, hidden_dim)
    norms = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in gen.modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.normal_(0, 0.05)
                m.bias.normal_(0, 0.1)
        for m in norms:
            m.weight.normal_(1, 0.2)
            m.bias.normal_(0, 0.2)
            m.momentum = None  # running statistics = the batch's
        gen.train()(torch.randn(64, input_dim))
        for m in norms:
            m.running_mean.add_(torch.randn_like(m.running_mean) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
            m.num_batches_tracked.fill_(secrets.randbelow(10_000) + 1)
    return gen.eval()


def source_images(gen: Generator, z: torch.Tensor, labels: torch.Tensor, n_classes: int):
    """The notebook's forward: gen(combine_vectors(noise, one_hot)), combine = cat on dim 1."""
    with torch.no_grad():
        return gen(torch.cat([z, F.one_hot(labels, n_classes).float()], 1)).numpy()


def save(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "z_dim, classes, hidden, channels, wrapped, export",
    [
        (64, "0-9", 64, 1, False, True),  # the notebook's: 74 inputs, hidden 64
        (32, "10", 16, 1, True, True),  # {"gen": ...}, inferred z_dim 32 and width 16
        (5, "cat,dog,owl", 4, 3, False, False),  # named classes, 3 image channels
    ],
)
def test_converted_generator_draws_what_the_source_draws(
    tmp_path, z_dim, classes, hidden, channels, wrapped, export
):
    names = parse_classes(classes)
    n = len(names)
    gen = source_generator(z_dim + n, channels, hidden)
    state = gen.state_dict()
    file = save({"gen": state, "disc": {}, "step": 3} if wrapped else state, tmp_path / "g.pth")

    artifact = convert_course(file, classes, tmp_path / "model", export=export)

    m = artifact.manifest
    assert (m.z_dim, m.classes, m.image_shape, m.value_range) == (
        z_dim, names, [channels, 28, 28], [-1.0, 1.0]
    )  # fmt: skip
    config = m.generator_config
    assert (config.arch, config.base_channels, config.embedding) == ("course", hidden, "onehot")
    assert m.provenance["converted_from"] == "g.pth" and m.provenance["format"] == "course"
    assert m.provenance["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert any(n.endswith(".onnx") for n in m.files) == export

    # The network module on arbitrary noise, every class.
    labels = torch.arange(n).repeat_interleave(3)
    z = torch.randn(len(labels), z_dim) * 1.5
    want = source_images(gen, z, labels, n)
    assert np.abs(want).max() > 0.05 and want.std() > 0.01  # not a trivial image
    with torch.no_grad():
        got = artifact.build_generator()(z, labels).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

    # The runtime: seeds give the Philox noise rows, whatever the backend.
    seeds = [secrets.randbelow(2**62) for _ in labels]
    want = source_images(gen, torch.from_numpy(ctrlgan.noise(seeds, z_dim)), labels, n)
    for backend in ("torch", "onnxruntime") if export else ("torch",):
        g = ctrlgan.load(artifact.path, backend=backend)
        got = g.sample(classes=labels.tolist(), seeds=seeds)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=backend)


@pytest.mark.gpu
def test_converted_model_on_the_triton_backend(tmp_path):
    """The fused prologue kernel gathers the class columns of fc, the course's first layer."""
    gen = source_generator(74, 1, 16)
    artifact = convert_course(save(gen.state_dict(), tmp_path / "g.pth"), 10, tmp_path / "m")
    labels = torch.arange(10).repeat_interleave(4)
    seeds = [secrets.randbelow(2**62) for _ in labels]
    want = source_images(gen, torch.from_numpy(ctrlgan.noise(seeds, 64)), labels, 10)
    got = ctrlgan.load(artifact.path, backend="triton").sample(classes=labels.tolist(), seeds=seeds)
    assert np.abs(got - want).max() <= 1e-2  # float16 body


def test_fc_is_the_first_transposed_convolution(tmp_path):
    """fc.weight = W.reshape(In, 4h * 9).T, fc.bias = b repeated per cell; the rest renamed."""
    gen = source_generator(7, 1, 4)
    state = gen.state_dict()
    artifact = convert_course(save(state, tmp_path / "g.pt"), 2, tmp_path / "m", export=False)
    weights = artifact.load_tensors(GENERATOR_WEIGHTS)
    w, b = state["gen.0.0.weight"], state["gen.0.0.bias"]
    assert torch.equal(weights["fc.weight"], w.reshape(7, 16 * 9).T)
    assert torch.equal(weights["fc.bias"], b.repeat_interleave(9))
    assert torch.equal(weights["fc.bias"][9:18], b[1].expand(9))
    assert torch.equal(weights["out.weight"], state["gen.3.0.weight"])
    assert torch.equal(weights["blocks.1.1.running_var"], state["gen.2.1.running_var"])
    assert weights["bn0.num_batches_tracked"].dtype == torch.int64
    assert weights["bn0.num_batches_tracked"] == state["gen.0.1.num_batches_tracked"]


def test_half_precision_weights_are_widened(tmp_path):
    gen = source_generator(6, 1, 4)
    state = {k: v.half() if v.is_floating_point() else v for k, v in gen.state_dict().items()}
    artifact = convert_course(save(state, tmp_path / "g.pth"), 2, tmp_path / "m", export=False)
    assert artifact.load_tensors(GENERATOR_WEIGHTS)["fc.weight"].dtype == torch.float32


def test_converting_again_replaces_the_artifact(tmp_path):
    out = tmp_path / "m"
    convert_course(save(source_generator(6, 1, 4).state_dict(), tmp_path / "a.pth"), 2, out)
    b = save(source_generator(9, 1, 4).state_dict(), tmp_path / "b.pth")
    artifact = convert_course(b, 3, out, export=False)
    assert (
        artifact.manifest.z_dim == 6 and artifact.manifest.provenance["converted_from"] == "b.pth"
    )
    assert sorted(p.name for p in out.iterdir()) == [GENERATOR_WEIGHTS, MANIFEST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth", "m"]


@pytest.mark.parametrize(
    "spec, names",
    [
        ("0-9", [str(i) for i in range(10)]),
        ("3", ["0", "1", "2"]),
        (4, ["0", "1", "2", "3"]),
        ("cat, dog", ["cat", "dog"]),
        ("0-2,other", ["0", "1", "2", "other"]),
        (["a", "b"], ["a", "b"]),
    ],
)
def test_class_specs(spec, names):
    assert parse_classes(spec) == names


@pytest.mark.parametrize(
    "spec, word", [("", "not a class name"), ("a,,b", "not a class name"), ("0", "1..10000"),
                   ("a,a", "repeated"), ("5-2", "range"), (True, "expected a count"),
                   ("x\ty", "not a class name"), ("0-20000", "range")]
)  # fmt: skip
def test_bad_class_specs_are_refused(spec, word):
    with pytest.raises(InvalidRequest, match=word) as e:
        parse_classes(spec)
    assert e.value.field == "classes"


class _Payload:
    """Unpickling this would run code: create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_file(kind: str, tmp_path):
    """A file that is not a course generator checkpoint, and the words its error must hold."""
    path = tmp_path / "bad.pth"
    state = source_generator(12, 1, 4).state_dict()  # 2 classes: z_dim 10

    def edited(**changes):
        return save({**state, **changes}, path)

    if kind == "empty":
        path.write_bytes(b"")
        return path, ["empty"]
    if kind == "directory":
        path.mkdir()
        return path, ["directory"]
    if kind == "missing":
        return path, ["no such file"]
    if kind == "text":
        path.write_text("gen.0.0.weight = [1, 2, 3]\n")
        return path, ["not a torch checkpoint"]
    if kind == "truncated":
        data = save(state, path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, ["not a torch checkpoint"]
    if kind == "pickle":
        path.write_bytes(pickle.dumps(_Payload(tmp_path / "ran")))
        return path, ["weights_only=True", "state_dict"]
    if kind == "module":
        return save(source_generator(12, 1, 4), path), ["refused", "it pickles", "Generator"]
    if kind == "tensor":
        return save(torch.randn(3), path), ["holds a Tensor", "state_dict"]
    if kind == "list":
        return save([state], path), ["holds a list"]
    if kind == "empty dict":
        return save({}, path), ["holds an empty dict"]
    if kind == "not tensors":
        return save({**state, "epoch": 3}, path), ["'epoch' is not a named tensor"]
    if kind == "discriminator":
        return save(Discriminator(1 + 2, 4).state_dict(), path), [
            "not the course's conditional generator",
            "disc.0.0.weight",
        ]
    if kind == "ctrlgan":
        config = GeneratorConfig(z_dim=10, n_classes=2, image_size=28, arch="course")
        return save(ConditionalGenerator(config).state_dict(), path), ["fc.weight"]
    if kind == "five blocks":  # a deeper generator: extra blocks are unexpected keys
        deeper = nn.Sequential(*Generator(12, 1, 4).gen, Generator(12, 1, 4).gen[1])
        return save({f"gen.{k}": v for k, v in deeper.state_dict().items()}, path), [
            "unexpected gen.4.0.weight"
        ]
    if kind == "missing key":
        del state["gen.2.1.running_var"]
        return save(state, path), ["missing gen.2.1.running_var"]
    if kind == "extra key":
        return edited(**{"gen.3.1.weight": torch.ones(1)}), ["unexpected gen.3.1.weight"]
    if kind == "wrong shape":
        return edited(**{"gen.1.0.weight": torch.randn(16, 8, 3, 3)}), [
            "gen.1.0.weight has shape [16, 8, 3, 3]",
            "[16, 8, 4, 4]",
        ]
    if kind == "not 4h":
        return edited(**{"gen.0.0.weight": torch.randn(12, 10, 3, 3)}), ["multiple of 4"]
    if kind == "nan":
        w = state["gen.2.0.weight"].clone()
        w[1, 2, 0, 1] = float("nan")
        return edited(**{"gen.2.0.weight": w}), ["gen.2.0.weight holds NaN or inf"]
    if kind == "inf variance":
        v = state["gen.0.1.running_var"].clone()
        v[3] = float("inf")
        return edited(**{"gen.0.1.running_var": v}), ["gen.0.1.running_var holds NaN or inf"]
    if kind == "beyond float32":
        w = state["gen.1.0.weight"].double()
        w[0, 0, 0, 0] = 1e300
        return edited(**{"gen.1.0.weight": w}), ["gen.1.0.weight holds NaN or inf (as float32)"]
    if kind == "negative variance":
        v = state["gen.1.1.running_var"].clone()
        v[0] = -1.0
        return edited(**{"gen.1.1.running_var": v}), ["gen.1.1.running_var", "negative"]
    if kind == "int weights":
        w = state["gen.3.0.weight"].round().to(torch.int32)
        return edited(**{"gen.3.0.weight": w}), ["gen.3.0.weight is torch.int32"]
    if kind == "too many channels":
        return save(source_generator(12, 17, 2).state_dict(), path), ["channels must be <= 16"]
    raise AssertionError(kind)


BAD_FILES = [
    "empty", "directory", "missing", "text", "truncated", "pickle", "module", "tensor", "list",
    "empty dict", "not tensors", "discriminator", "ctrlgan", "five blocks",
    "missing key", "extra key", "wrong shape", "not 4h", "nan", "inf variance", "beyond float32",
    "negative variance", "int weights", "too many channels",
]  # fmt: skip


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_files_are_refused_naming_the_file(tmp_path, kind):
    path, words = _bad_file(kind, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ArtifactError) as e:
        convert_course(path, 2, tmp_path / "model")
    assert e.value.path == str(path)
    for word in words:
        assert word in e.value.message, e.value.message
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing run


def test_a_pickle_is_never_run(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"gen": _Payload(tmp_path / "ran")}))
    with pytest.raises(ArtifactError, match="weights_only=True"):
        convert_course(path, 10, tmp_path / "model")
    assert not (tmp_path / "ran").exists()
    pickle.loads(path.read_bytes())["gen"].close()  # unpickled, the payload does run
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    "classes, z_dim, field, word",
    [
        ("0-12", None, None, "12 inputs (z_dim + classes): 13 classes leave z_dim = -1"),
        ("0-11", None, None, "z_dim = 0; it must be >= 1"),
        (2, 8, None, "z_dim is 10, not 8"),
        (2, 0, "z_dim", "must be an int >= 1"),
        ("a,a", None, "classes", "repeated"),
    ],
)
def test_classes_and_z_dim_must_fit_the_file(tmp_path, classes, z_dim, field, word):
    path = save(source_generator(12, 1, 4).state_dict(), tmp_path / "g.pth")
    error = InvalidRequest if field else ArtifactError
    with pytest.raises(error) as e:
        convert_course(path, classes, tmp_path / "model", z_dim=z_dim)
    assert word in str(e.value)
    if field:
        assert e.value.field == field
    assert not (tmp_path / "model").exists()


def test_out_must_be_a_model_directory(tmp_path):
    path = save(source_generator(6, 1, 4).state_dict(), tmp_path / "g.pth")
    with pytest.raises(InvalidRequest, match="is a file") as e:
        convert_course(path, 2, path)
    assert e.value.field == "out"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for export in (True, False):
        with pytest.raises(InvalidRequest, match="not a model artifact"):
            convert_course(path, 2, busy, export=export)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    with pytest.raises(InvalidRequest, match="does not exist"):
        convert_course(path, 2, tmp_path / "no" / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "g.pth"]


# The command -----------------------------------------------------------------------------


def test_cli_convert_then_export_sample_info_and_directions(tmp_path, capsys):
    gen = source_generator(12 + 10, 1, 4)
    path = save({"gen": gen.state_dict()}, tmp_path / "gen.pth")
    out = tmp_path / "model"
    code, text, err = run(
        capsys, "convert", "course", str(path), "--classes", "0-9", "--out", str(out),
        "--z-dim", "12", "--no-export",
    )  # fmt: skip
    assert code == 0, err
    assert "z_dim 12, 10 classes" in text and "hidden width 4" in text and "ctrlgan export" in text
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["generator"]["arch"] == "course" and not manifest["onnx"]
    assert manifest["provenance"]["command"].startswith("ctrlgan convert course ")

    code, text, err = run(capsys, "export", str(out))
    assert code == 0, err
    code, text, err = run(capsys, "info", str(out))
    assert code == 0, err
    assert "converted    from gen.pth (course" in text and "runs in onnxruntime" in text

    png = tmp_path / "seven.png"
    code, text, err = run(
        capsys, "sample", str(out), "--class", "7", "--n", "4", "--backend",
        "onnxruntime", "-o", str(png),
    )  # fmt: skip
    assert code == 0, err
    seeds = [0, 1, 2, 3]
    want = source_images(gen, torch.from_numpy(ctrlgan.noise(seeds, 12)), torch.full((4,), 7), 10)
    got = ctrlgan.load(out, backend="onnxruntime").sample(classes=7, seeds=seeds)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert png.is_file()

    # Directions need no feature network: a converted model is read by the image moments.
    code, text, err = run(capsys, "directions", str(out), "--samples", "40", "--features", "size")
    assert code == 0, err
    assert "image moments" in text and "wrote 1 boundary direction(s)" in text
    artifact = Artifact.open(out)
    assert artifact.manifest.directions == ["size"]
    assert artifact.manifest.provenance["converted_from"] == "gen.pth"


def test_cli_convert_exports_by_default(tmp_path, capsys):
    path = save(source_generator(6, 1, 4).state_dict(), tmp_path / "g.pth")
    code, text, err = run(
        capsys, "convert", "course", str(path), "--classes", "a,b", "--out", str(tmp_path / "m")
    )
    assert code == 0, err
    assert "generator.onnx" in text and "ctrlgan export" not in text
    assert ctrlgan.load(tmp_path / "m", backend="onnxruntime").classes == ["a", "b"]


@pytest.mark.parametrize(
    "kind, extra, words",
    [
        ("pickle", [], ["convert", "bad.pth", "weights_only=True"]),
        ("directory", [], ["bad.pth", "directory"]),
        ("empty", [], ["bad.pth", "empty"]),
        ("discriminator", [], ["bad.pth", "not the course's conditional generator"]),
        ("wrong shape", [], ["bad.pth", "gen.1.0.weight"]),
        (None, ["--classes", "0-20"], ["g.pth", "21 classes"]),
        (None, ["--z-dim", "3"], ["g.pth", "z_dim is 10, not 3"]),
        (None, ["--classes", "x,x"], ["classes", "repeated"]),
        (None, ["--format-typo"], ["unrecognized arguments"]),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, kind, extra, words):
    if kind is None:
        path = save(source_generator(12, 1, 4).state_dict(), tmp_path / "g.pth")
    else:
        path, _ = _bad_file(kind, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["convert", "course", str(path), "--classes", "2", "--out", str(tmp_path / "m")]
    code, text, err = run(capsys, *argv, *extra)
    assert_one_line_error(code, err, *words)
    assert text == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before
