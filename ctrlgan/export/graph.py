"""The ONNX graphs of a generator, built node by node from its weights.

    generator.onnx       z_a, z_b, t, class_a, class_b, s, alpha -> image      (DESIGN's contract)
    generator.fp16.onnx  the same signature; the body computes in float16
    generator.body.onnx  latent [B, Z + E] -> image, for backends that make the latent themselves

Steps 2-5 of the latent prologue are one model-local function ``ctrlgan.LatentPrep`` of standard
ops (so any runtime inlines it, while ctrlgan's GPU backend can run its Triton kernel there):

    z = (1 - t) z_a + t z_b                        lerp (slerp: the caller passes slerp(z_a, z_b, t)
                                                   as z_a with t = 0, which returns z_a exactly)
    z = z + alpha @ D   or   z + alpha @ D[class_a] (global [K, Z] or per-class [C, K, Z] table)
    y = (1 - s) e[class_a] + s e[class_b]          e: the class table (identity for one-hot)
    x = concat(z, y)

The body is the generator after its input with every BatchNorm folded into the layer before it
(eval-mode statistics): Gemm -> Reshape -> Relu -> [ConvTranspose -> Relu] ... -> ConvTranspose
-> Tanh. Graphs are built by hand rather than traced, so the structure is exactly this and the
batch dimension is symbolic ("batch") everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ctrlgan.network import ConditionalGenerator

OPSET = 18
IR_VERSION = 10  # opset 18 needs >= 8; onnxruntime 1.31 reads <= 13 (onnx 1.23 writes 14)
DOMAIN = "ctrlgan"
FUNCTION = "LatentPrep"
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


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def latent_prep_function(steer: int) -> onnx.FunctionProto:
    """ctrlgan.LatentPrep(z_a, z_b, t, class_a, class_b, s, alpha, directions, table) -> x.

    ``steer``: 0 no table (alpha is ignored), 1 global [K, Z], 2 per-class [C, K, Z].
    """
    n = helper.make_node
    nodes = [
        _const("one", np.array(1.0, dtype=np.float32)),
        _const("axis1", np.array([1], dtype=np.int64)),
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
    return helper.make_function(
        DOMAIN,
        FUNCTION,
        [*INPUTS, "directions", "table"],
        ["x"],
        nodes,
        [helper.make_opsetid("", OPSET)],
    )


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
    nodes = [
        n(
            "Gemm",
            [x, init("body.fc.weight", fc.weight), init("body.fc.bias", fc.bias)],
            ["h0"],
            transB=1,
        ),
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


def _model(graph: onnx.GraphProto, functions=()) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)]
    if functions:
        opsets.append(helper.make_opsetid(DOMAIN, 1))
    model = helper.make_model(
        graph, opset_imports=opsets, functions=list(functions), producer_name="ctrlgan"
    )
    model.ir_version = IR_VERSION
    return model


def build_generator_graph(
    g: ConditionalGenerator,
    directions: torch.Tensor | None = None,
    fp16: bool = False,
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
    prep = helper.make_node(
        FUNCTION, [*INPUTS, "directions", "class_table"], ["latent"], domain=DOMAIN
    )
    dtype = np.float16 if fp16 else np.float32
    body_in, body_out = ("latent16", "image16") if fp16 else ("latent", "image")
    nodes, inits = _body_nodes(fold_body(g), body_in, body_out, g.ch0, g.s0, dtype)
    nodes = [prep, *nodes]
    if fp16:
        nodes.insert(1, helper.make_node("Cast", ["latent"], ["latent16"], to=TensorProto.FLOAT16))
        nodes.append(helper.make_node("Cast", ["image16"], ["image"], to=TensorProto.FLOAT))
    inits += [
        numpy_helper.from_array(table_d, "directions"),
        numpy_helper.from_array(table_e, "class_table"),
    ]
    graph = helper.make_graph(nodes, "ctrlgan_generator", inputs, [output], initializer=inits)
    return _model(graph, [latent_prep_function(steer if K else 0)])


def build_body_graph(g: ConditionalGenerator) -> onnx.ModelProto:
    """generator.body.onnx: latent float32 [B, Z + E] -> image, float32."""
    config = g.config
    latent = _value("latent", TensorProto.FLOAT, [BATCH, config.latent_dim])
    size = config.image_size
    image = _value("image", TensorProto.FLOAT, [BATCH, config.channels, size, size])
    nodes, inits = _body_nodes(fold_body(g), "latent", "image", g.ch0, g.s0, np.float32)
    graph = helper.make_graph(nodes, "ctrlgan_generator_body", [latent], [image], inits)
    return _model(graph)


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
