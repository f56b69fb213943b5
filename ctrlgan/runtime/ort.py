"""ONNX Runtime sessions for an exported generator.

``OrtSession.open(artifact)`` builds a session with every graph optimisation on and the thread
counts asked for, then checks the graph's inputs and outputs (as onnxruntime reads them: no
onnx or torch import on this path) against the signature in the manifest. The CUDA provider is
requested only where CUDA is usable (onnxruntime was built with the provider and a device is
usable: runtime/cuda.py): asking for it elsewhere makes onnxruntime print errors, so a CPU
machine gets the CPU provider alone and stays quiet.

``run`` on the CUDA provider goes through an IOBinding: inputs are bound once, and onnxruntime
writes the image straight into a numpy array allocated here. On the CPU provider the plain
``session.run`` is faster (measured on 2 cores at batch 1: 37 µs plain, 42 µs with a reused
binding, 47 µs with a new one; the binding's per-input wrappers cost more than they save when
nothing crosses a device boundary), so ``run`` uses it there; ``run_bound`` forces the binding.

Thread-pool spinning is off (``ALLOW_SPINNING``). onnxruntime's pool threads otherwise spin on
a core after every parallel section and run, waiting for more work, and on a small machine that
core is the one the Python threads feeding the session need: on 2 cores, 64 asyncio tasks
through the micro-batcher gave 3,347 images/s with spinning and 6,120 without, and 64 tasks
calling ``sample`` from a thread pool 3,447 and 4,878 (benchmarks/README.md, "Micro-batching").
A lone caller at batch 1 loses a little (124 against 111 µs on an idle machine); batch 64 and
anything sharing the cores gain (``ctrlgan bench`` at batch 64: ~10,000 against ~6,000 images/s).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ctrlgan.artifact import BODY_ONNX, GENERATOR_ONNX, Artifact
from ctrlgan.errors import ArtifactError, BackendUnavailable, InvalidRequest, summary
from ctrlgan.runtime import cuda

SMOKE_ROWS = 64  # classes check_runs draws
ALLOW_SPINNING = False  # onnxruntime's pool threads busy-wait for work (see above)
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# onnxruntime's type strings -> the element names of the manifest's signatures (onnx's)
_ELEMENT = {
    "tensor(float)": "float",
    "tensor(float16)": "float16",
    "tensor(double)": "double",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}


def cuda_usable() -> bool:
    """Whether onnxruntime's CUDA provider can run here (not merely whether it is installed)."""
    return CUDA in ort.get_available_providers() and cuda.available()


def providers_for(device: str) -> list[str]:
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if not cuda_usable():
            raise BackendUnavailable(
                "onnxruntime: CUDA is not usable here (needs a CUDA device and onnxruntime-gpu)"
            )
        return [CUDA, CPU]
    raise InvalidRequest("device", f"must be 'cpu' or 'cuda', got {device!r}")


class OrtSession:
    """One onnxruntime session of an exported graph; ``run(feeds) -> image``."""

    def __init__(
        self,
        model: bytes,
        device: str = "cpu",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
    ):
        for name, value in (("intra_op_threads", intra_op_threads),
                            ("inter_op_threads", inter_op_threads)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidRequest(name, f"must be an int >= 0 (0: all cores), got {value!r}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 4  # fatal only: failures reach the caller as exceptions
        spin = "1" if ALLOW_SPINNING else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        self.device = device
        self.session = ort.InferenceSession(model, options, providers=providers_for(device))
        self.inputs = [i.name for i in self.session.get_inputs()]
        self._input_set = set(self.inputs)
        self._bind = CUDA in self.session.get_providers()
        inner = getattr(self.session, "_sess", None)  # onnxruntime's pybind session
        self._run = inner.run if inner is not None else self._wrapped_run
        (out,) = self.session.get_outputs()
        self.output = out.name
        self.output_shape = tuple(out.shape[1:])  # per image; the batch is symbolic
        if not all(isinstance(d, int) for d in self.output_shape):
            raise InvalidRequest("model", f"output {out.name} has a symbolic image shape")

    @classmethod
    def open(cls, artifact: Artifact, name: str = GENERATOR_ONNX, **options) -> OrtSession:
        """A session of the artifact's graph ``name``, checked against the manifest first."""
        path = artifact.file(name)  # listed, so its checksum was verified on open
        recorded = artifact.manifest.onnx.get(name)
        if recorded is None:
            raise ArtifactError(str(path), "has no signature in the manifest")
        try:
            model = path.read_bytes()
        except OSError as e:
            raise ArtifactError(str(path), f"cannot be read ({e.strerror})") from None
        try:
            session = cls(model, **options)
        except (InvalidRequest, BackendUnavailable):
            raise
        except Exception as e:  # onnxruntime's Fail / InvalidGraph / InvalidProtobuf
            raise ArtifactError(str(path), f"onnxruntime cannot load it ({summary(e)})") from None
        found = session.signature()
        expected = {"inputs": recorded.get("inputs"), "outputs": recorded.get("outputs")}
        if found != expected:
            raise ArtifactError(
                str(path), f"signature {found} differs from the manifest's {expected}"
            )
        return session

    def signature(self) -> dict:
        """Inputs and outputs as the manifest records them: [name, element type, dims]."""

        def describe(args) -> list:
            return [
                [
                    a.name,
                    _ELEMENT.get(a.type, a.type),
                    [d if d is not None else "?" for d in a.shape],
                ]
                for a in args
            ]

        return {
            "inputs": describe(self.session.get_inputs()),
            "outputs": describe(self.session.get_outputs()),
        }

    def _wrapped_run(self, names, feeds, options):
        return self.session.run(names, feeds, options)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's output for ``feeds`` (numpy arrays by input name), as a new array."""
        if self._bind:
            return self.run_bound(feeds)
        self._check_feeds(feeds)
        # The binding under InferenceSession.run: its Python wrapper only re-checks the input
        # names (done above) and costs ~2 µs a call, 5% of a batch-1 run of the bundled model.
        return self._run([self.output], feeds, None)[0]

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        if feeds.keys() != self._input_set:
            raise InvalidRequest("feeds", f"expected inputs {self.inputs}, got {sorted(feeds)}")

    def run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """``run`` through an IOBinding, the output written into a preallocated array."""
        self._check_feeds(feeds)
        batch = len(next(iter(feeds.values())))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        out = np.empty((batch, *self.output_shape), dtype=np.float32)
        binding.bind_output(self.output, "cpu", 0, np.float32, out.shape, out.ctypes.data)
        self.session.run_with_iobinding(binding)
        return out


def check_runs(artifact: Artifact, name: str, session: OrtSession) -> None:
    """Run a graph once on one row per class (at most SMOKE_ROWS classes, spread from the
    first to the last; seeds 0.., no steering or mixing): it must give finite images of the
    manifest's shape, else the artifact cannot sample."""
    from ctrlgan.runtime import philox

    m = artifact.manifest
    classes = np.unique(np.linspace(0, len(m.classes) - 1, SMOKE_ROWS).round().astype(np.int64))
    C, Z = len(classes), m.z_dim
    z = philox.normal(np.arange(C, dtype=np.uint64), Z)
    if name == BODY_ONNX:  # the class part of the latent: one-hot, or zeros for a table
        width = session.signature()["inputs"][0][2][1]
        latent = np.zeros((C, width), np.float32)
        latent[:, :Z] = z
        if m.embedding == "onehot":
            latent[np.arange(C), Z + classes] = 1.0
        feeds = {"latent": latent}
    else:
        zeros = np.zeros(C, np.float32)
        feeds = {
            "z_a": z, "z_b": z, "t": zeros, "class_a": classes, "class_b": classes, "s": zeros,
            "alpha": np.zeros((C, len(m.directions)), np.float32),
        }  # fmt: skip
    try:
        image = session.run(feeds)
    except Exception as e:
        raise ArtifactError(str(artifact.path / name), f"fails to run ({summary(e)})") from None
    if image.shape != (C, *m.image_shape) or not np.isfinite(image).all():
        raise ArtifactError(
            str(artifact.path / name), "does not draw finite images of the manifest's shape"
        )
