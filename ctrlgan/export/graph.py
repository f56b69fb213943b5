"""The ONNX graphs of a generator, built node by node from its weights.

    generator.onnx       z_a, z_b, t, class_a, class_b, s, alpha -> image      (DESIGN's contract)
    generator.fp16.onnx  the same signature; the body computes in float16
    generator.body.onnx  latent [B, Z + E] -> image, for backends that make the latent themselves

Steps 2-5 of the latent prologue are standard ONNX ops in the main graph, every node and value
named ``prologue/...`` so that a viewer (Netron) shows them as one group. (They used to be one
model-local function, ``ctrlgan.LatentPrep``; OpenVINO, tract and onnx2torch refuse a function in
a custom domain, so the graphs users get carry none. ctrlgan's GPU backend never ran the graph's
prologue anyway: it runs steps 1-5 as its Triton kernel.)

    z = (1 - t) z_a + t z_b                        lerp (slerp: the caller passes slerp(z_a, z_b, t)
                                                   as z_a with t = 0, which returns z_a exactly)
    z = z + alpha @ D   or   z + alpha @ D[class_a] (global [K, Z] or per-class [C, K, Z] table)
    y = (1 - s) e[class_a] + s e[class_b]          e: the class table (identity for one-hot)
    x = concat(z, y)

The body is the generator after its input with every BatchNorm folded into the layer before it
(eval-mode statistics): Gemm -> Reshape -> Relu -> [ConvTranspose -> Relu] ... -> ConvTranspose
-> Tanh. In the float16 graph the first layer's bias is a separate Add after a bias-free Gemm:
tract 0.23 rejects a float16 Gemm with a bias ("Output mismatch after rewiring expansion ...
expected F16 got F32"; a one-node Gemm reproduces it, docs/onnx.md). Graphs are built by hand
rather than traced, so the structure is exactly this and the batch dimension is symbolic
("batch") everywhere. ``metadata`` (``graph_metadata``) goes into every graph's
``metadata_props``: class names, steering features in alpha's column order, z size, image shape
and value range, and the noise contract, so that the .onnx file alone says what its inputs mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ctrlgan.network import ConditionalGenerator

OPSET = 18
IR_VERSION = 10  # opset 18 needs >= 8; onnxruntime 1.31 reads <= 13 (onnx 1.23 writes 14)
PROLOGUE = "prologue/"  # the name prefix of the latent prologue's nodes and values
BATCH = "batch"
INPUTS = ("z_a", "z_b", "t", "class_a", "class_b", "s", "alpha")


@dataclass(frozen=True)
class Layer:
    """One folded body layer: weight and bias as float32 numpy arrays."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int = 1  # transposed convolutions: stride and padding (the kernel is the weight's)
    padding: int = 0


def fold_body(g: ConditionalGenerator) -> list[Layer]:
    """The body's layers with BatchNorm folded in: [fc, convT..., out]. Exact in real arithmetic:
    BN(y) = k (y - mean) + beta with k = gamma / sqrt(var + eps), per output channel."""

    def scale_shift(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        k = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        return k, bn.bias.double() - bn.running_mean.double() * k

    def layer(weight: torch.Tensor, bias: torch.Tensor, conv=None) -> Layer:
        at = {} if conv is None else {"stride": conv.stride[0], "padding": conv.padding[0]}
        return Layer(weight.float().numpy(), bias.float().numpy(), **at)

    with torch.no_grad():  # folded in float64, rounded once
        k, shift = scale_shift(g.bn0)
        per_row = g.s0 * g.s0  # fc rows are [channel, y, x] flattened
        k_rows, shift_rows = k.repeat_interleave(per_row), shift.repeat_interleave(per_row)
        fc_w, fc_b = g.fc.weight.double(), g.fc.bias.double()
        layers = [layer(fc_w * k_rows[:, None], fc_b * k_rows + shift_rows)]
        for block in g.blocks:
            conv, bn = block[0], block[1]
            k, shift = scale_shift(bn)
            if conv.bias is not None:  # the course's layout: BN(conv + b) = k conv + (k b + shift)
                shift = shift + k * conv.bias.double()
            layers.append(layer(conv.weight.double() * k[None, :, None, None], shift, conv))
        layers.append(layer(g.out.weight, g.out.bias, g.out))
    return layers


def _value(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


NOISE_CONTRACT = (
    "z[b, j] = randn(seed[b], j), j < z_dim: Triton's tl.randn(seed, offset). Philox-4x32-10 "
    "with counter (offset, 0, 0, 0) and key (low, high 32 bits of the 64-bit seed); rounds "
    "c0' = mulhi(B, c2) ^ c1 ^ k0, c2' = mulhi(A, c0) ^ c3 ^ k1, c1' = lo(B c2), "
    "c3' = lo(A c0), key += (0x9E3779B9, 0xBB67AE85), A = 0xD2511F53, B = 0xCD9E8D57. "
    "Uniforms from the first two outputs as int32 (x < 0 -> ~x) times 4.6566127342e-10; "
    "Box-Muller, cosine branch: sqrt(-2 ln max(u1, 1e-7)) cos(2 pi u2). Truncation tau: a value "
    "with |z| > tau is redrawn from offset j + r z_dim, r = 1..3, then clamped. The graph takes "
    "z itself (z_a, z_b); slerp is done by the caller, fed as z_a with t = 0. "
    "Reference: ctrlgan.kernels.reference; NumPy: docs/onnx.md."
)


def graph_metadata(
    classes, features, z_dim: int, image_shape, value_range=(-1.0, 1.0)
) -> dict[str, str]:
    """The ``metadata_props`` of every graph: what the inputs and the output mean."""
    return {
        "ctrlgan.classes": json.dumps(list(classes)),
        "ctrlgan.features": json.dumps(list(features)),
        "ctrlgan.z_dim": str(int(z_dim)),
        "ctrlgan.image_shape": json.dumps([int(v) for v in image_shape]),
        "ctrlgan.value_range": json.dumps([float(v) for v in value_range]),
        "ctrlgan.inputs": (
            "z_a, z_b float32 [B, z_dim]: noise rows; t float32 [B]: z = (1 - t) z_a + t z_b; "
            "class_a, class_b int64 [B]: class ids (ctrlgan.classes); s float32 [B]: class "
            "embedding (1 - s) e(class_a) + s e(class_b); alpha float32 [B, K]: steering "
            "strength along each of ctrlgan.features; image float32 [B, C, H, W] in "
            "ctrlgan.value_range"
        ),
        "ctrlgan.noise": NOISE_CONTRACT,
    }


def latent_prep_nodes(steer: int, latent: str = "latent") -> list[onnx.NodeProto]:
    """Steps 2-5 from the graph inputs (z_a, z_b, t, class_a, class_b, s, alpha) and the
    initializers ``directions`` and ``class_table`` to ``latent`` = concat(z, y).

    ``steer``: 0 no table (alpha is ignored), 1 global [K, Z], 2 per-class [C, K, Z]. Every
    node and intermediate value is named ``prologue/...``.
    """
    outer = {*INPUTS, "directions", "table", "x"}
    rename = {"table": "class_table", "x": latent}
    named = lambda v: rename.get(v, v) if v in outer else PROLOGUE + v
    counts: dict[str, int] = {}

    def n(op: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
        counts[op] = counts.get(op, 0) + 1
        return helper.make_node(
            op,
            [named(v) for v in inputs],
            [named(v) for v in outputs],
            name=f"{PROLOGUE}{op}_{counts[op]}",
            **attrs,
        )

    nodes = [
        n("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1.0, np.float32))),
        n("Constant", [], ["axis1"], value=numpy_helper.from_array(np.array([1], np.int64))),
        n("Unsqueeze", ["t", "axis1"], ["t2"]),
        n("Sub", ["one", "t2"], ["omt"]),
        n("Mul", ["omt", "z_a"], ["wa"]),
        n("Mul", ["t2", "z_b"], ["wb"]),
        n("Add", ["wa", "wb"], ["z_lerp"]),
    ]
    z = "z_lerp"
    if steer == 1:
        nodes += [n("MatMul", ["alpha", "directions"], ["push"]), n("Add", [z, "push"], ["z"])]
        z = "z"
    elif steer == 2:
        nodes += [
            n("Gather", ["directions", "class_a"], ["d_rows"], axis=0),  # [B, K, Z]
            n("Unsqueeze", ["alpha", "axis1"], ["alpha3"]),  # [B, 1, K]
            n("MatMul", ["alpha3", "d_rows"], ["push3"]),  # [B, 1, Z]
            n("Squeeze", ["push3", "axis1"], ["push"]),
            n("Add", [z, "push"], ["z"]),
        ]
        z = "z"
    nodes += [
        n("Unsqueeze", ["s", "axis1"], ["s2"]),
        n("Sub", ["one", "s2"], ["oms"]),
        n("Gather", ["table", "class_a"], ["ea"], axis=0),
        n("Gather", ["table", "class_b"], ["eb"], axis=0),
        n("Mul", ["oms", "ea"], ["ya"]),
        n("Mul", ["s2", "eb"], ["yb"]),
        n("Add", ["ya", "yb"], ["y"]),
        n("Concat", [z, "y"], ["x"], axis=1),
    ]
    return nodes


def _body_nodes(
    layers: list[Layer], x: str, image: str, ch0: int, s0: int, dtype: np.dtype
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers of the folded body from latent ``x`` to ``image``."""
    n = helper.make_node
    inits = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array.astype(dtype)), name))
        return name

    fc = layers[0]
    shape = numpy_helper.from_array(np.array([-1, ch0, s0, s0], dtype=np.int64), "body.shape0")
    inits.append(shape)
    weight, bias = init("body.fc.weight", fc.weight), init("body.fc.bias", fc.bias)
    if dtype == np.float16:  # tract rejects a float16 Gemm with a bias (module docstring)
        nodes = [
            n("Gemm", [x, weight], ["h0_nobias"], transB=1),
            n("Add", ["h0_nobias", bias], ["h0"]),
        ]
    else:
        nodes = [n("Gemm", [x, weight, bias], ["h0"], transB=1)]
    nodes += [
        n("Reshape", ["h0", "body.shape0"], ["h0r"]),
        n("Relu", ["h0r"], ["a0"]),
    ]
    h = "a0"
    for i, layer in enumerate(layers[1:], start=1):
        last = i == len(layers) - 1
        w = init(f"body.conv{i}.weight", layer.weight)
        b = init(f"body.conv{i}.bias", layer.bias)
        conv = f"c{i}"
        nodes.append(
            n(
                "ConvTranspose",
                [h, w, b],
                [conv],
                kernel_shape=list(layer.weight.shape[2:]),
                strides=[layer.stride] * 2,
                pads=[layer.padding] * 4,
            )
        )
        h = f"a{i}"
        nodes.append(n("Tanh" if last else "Relu", [conv], [image if last else h]))
    return nodes, inits


def _model(graph: onnx.GraphProto, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ctrlgan"
    )
    model.ir_version = IR_VERSION
    if metadata:
        helper.set_model_props(model, metadata)
    return model


def build_generator_graph(
    g: ConditionalGenerator,
    directions: torch.Tensor | None = None,
    fp16: bool = False,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """generator.onnx (or, with ``fp16``, generator.fp16.onnx) for an eval-mode generator.

    ``directions``: the steering table baked in as an initializer, [K, Z] or [C, K, Z]; None
    for a model without one (``alpha`` is then [B, 0] and ignored).
    """
    config = g.config
    Z = config.z_dim
    if directions is None:
        steer, K = 0, 0
        table_d = np.zeros((0, Z), dtype=np.float32)
    else:
        steer, K = directions.dim() - 1, directions.shape[-2]
        table_d = directions.detach().float().numpy()
    table_e = g.class_table().detach().float().numpy()
    B = BATCH
    inputs = [
        _value("z_a", TensorProto.FLOAT, [B, Z]),
        _value("z_b", TensorProto.FLOAT, [B, Z]),
        _value("t", TensorProto.FLOAT, [B]),
        _value("class_a", TensorProto.INT64, [B]),
        _value("class_b", TensorProto.INT64, [B]),
        _value("s", TensorProto.FLOAT, [B]),
        _value("alpha", TensorProto.FLOAT, [B, K]),
    ]
    channels, size = config.channels, config.image_size
    output = _value("image", TensorProto.FLOAT, [B, channels, size, size])
    steer = steer if K else 0
    prep = latent_prep_nodes(steer)
    dtype = np.float16 if fp16 else np.float32
    body_in, body_out = ("latent16", "image16") if fp16 else ("latent", "image")
    nodes, inits = _body_nodes(fold_body(g), body_in, body_out, g.ch0, g.s0, dtype)
    if fp16:
        nodes.insert(0, helper.make_node("Cast", ["latent"], ["latent16"], to=TensorProto.FLOAT16))
        nodes.append(helper.make_node("Cast", ["image16"], ["image"], to=TensorProto.FLOAT))
    nodes = [*prep, *nodes]
    if steer:  # without a table alpha is [B, 0] and unused
        inits.append(numpy_helper.from_array(table_d, "directions"))
    inits.append(numpy_helper.from_array(table_e, "class_table"))
    graph = helper.make_graph(nodes, "ctrlgan_generator", inputs, [output], initializer=inits)
    return _model(graph, metadata)


def build_body_graph(
    g: ConditionalGenerator, metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """generator.body.onnx: latent float32 [B, Z + E] -> image, float32."""
    config = g.config
    latent = _value("latent", TensorProto.FLOAT, [BATCH, config.latent_dim])
    size = config.image_size
    image = _value("image", TensorProto.FLOAT, [BATCH, config.channels, size, size])
    nodes, inits = _body_nodes(fold_body(g), "latent", "image", g.ch0, g.s0, np.float32)
    graph = helper.make_graph(nodes, "ctrlgan_generator_body", [latent], [image], inits)
    return _model(graph, metadata)


def signature(model: onnx.ModelProto) -> dict:
    """Inputs and outputs in order, each [name, element type, shape]; symbolic dims by name."""

    def describe(values) -> list:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append([v.name, TensorProto.DataType.Name(t.elem_type).lower(), dims])
        return out

    return {
        "inputs": describe(model.graph.input),
        "outputs": describe(model.graph.output),
        "opset": OPSET,
        "ir_version": model.ir_version,
    }
