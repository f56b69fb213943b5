"""The Open Inference Protocol v2 tensor codec: wire bytes and JSON in, numpy arrays out, and
back. Shared by the HTTP app and the gRPC service; knows nothing of models.

A request is an ``InferRequest`` (id, parameters, input Tensors, requested outputs); a response
is a list of named numpy arrays. Over HTTP a tensor travels as JSON (``data``: a flat or nested
row-major list) or, with the binary tensor data extension, as raw little-endian bytes after the
JSON header (``Inference-Header-Content-Length``; per tensor ``binary_data_size``). Over gRPC it
travels in ``raw_input_contents`` / ``raw_output_contents`` (or typed ``contents``).

Everything a client sends is checked here before it is converted: names and datatypes are
strings from a fixed set, shapes are small lists of non-negative ints whose product is bounded,
the data holds exactly that many values of the datatype's kind (ints for integer types, reals
for float types, never bools, strings or nested garbage), and binary sections add up to the
body. A violation is a ProtocolError naming the field, answered 400.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

# datatype -> little-endian numpy dtype (BYTES, strings, is not a tensor type this server takes)
DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = {dtype: name for name, dtype in DTYPES.items()}
MAX_DIMS = 8
MAX_TIMEOUT_US = 365 * 24 * 3600 * 10**6  # a request's timeout: a year is no deadline at all
HEADER = "inference-header-content-length"


class ProtocolError(Exception):
    """A request the protocol layer refuses: ``status`` (HTTP) and a message naming the field."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(message)


def bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray  # of DTYPES[datatype], already reshaped to ``shape``


@dataclass
class InferRequest:
    id: str | None
    parameters: dict
    inputs: dict[str, Tensor]
    outputs: list[str] | None  # None: every output
    binary_outputs: set[str] = field(default_factory=set)  # HTTP only
    binary_default: bool = False  # the request-level binary_data_output


# Parsing -----------------------------------------------------------------------------------
def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body, at most ``limit`` bytes once inflated (413 beyond)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(415, f"content-encoding {encoding[:40]!r} is not supported")
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)  # gzip / zlib wrappers
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        if encoding == "deflate":  # some clients send raw deflate without the zlib header
            try:
                inflater = zlib.decompressobj(-15)
                out = inflater.decompress(body, limit + 1)
            except zlib.error as e:
                raise bad(f"body: not valid {encoding} data ({e})") from None
        else:
            raise bad(f"body: not valid {encoding} data") from None
    if len(out) > limit:
        raise ProtocolError(413, f"body: more than {limit} bytes once decompressed")
    return out


def parse_http(body: bytes, header_length: str | None, max_elements: int) -> InferRequest:
    """An HTTP infer request body (JSON, or JSON header + binary tensors) -> InferRequest."""
    if header_length is None:
        head, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise bad(
                f"Inference-Header-Content-Length: {header_length[:40]!r} is not a length "
                f"within the {len(body)}-byte body"
            )
        head, binary = body[:n], memoryview(body)[n:]
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 4300+ digit ints
        raise bad(f"body: not valid JSON ({str(e)[:120]})") from None
    return request_from_json(doc, binary, max_elements)


def request_from_json(doc, binary, max_elements: int) -> InferRequest:
    if not isinstance(doc, dict):
        raise bad("body: an inference request is a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad("id: must be a string")
    params = parameters(doc.get("parameters"), "parameters")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise bad("inputs: required, a non-empty list of tensors")
    if len(inputs_doc) > 16:
        raise bad(f"inputs: {len(inputs_doc)} tensors; this server's models take at most 4")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for i, spec in enumerate(inputs_doc):
        where = f"inputs[{i}]"
        if not isinstance(spec, dict):
            raise bad(f"{where}: a tensor is a JSON object")
        name, datatype, shape = tensor_header(spec, where, max_elements)
        where = f"inputs.{name}"
        if name in inputs:
            raise bad(f"{where}: given twice")
        tparams = parameters(spec.get("parameters"), f"{where}.parameters")
        size = tparams.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise bad(f"{where}.parameters.binary_data_size: must be an int >= 0")
            if "data" in spec:
                raise bad(f"{where}: has both data and binary_data_size")
            if offset + size > len(binary):
                raise bad(
                    f"{where}.parameters.binary_data_size: {size} bytes, but only "
                    f"{len(binary) - offset} binary bytes are left in the body"
                )
            data = from_bytes(binary[offset : offset + size], datatype, shape, where)
            offset += size
        else:
            if "data" not in spec:
                raise bad(f"{where}: no data (and no binary_data_size)")
            data = from_json(spec["data"], datatype, shape, where)
        inputs[name] = Tensor(name, datatype, shape, data)
    if offset != len(binary):
        raise bad(f"body: {len(binary) - offset} binary bytes after the tensors that none claims")

    outputs, binary_outputs = None, set()
    binary_default = params.get("binary_data_output", False)
    if type(binary_default) is not bool:
        raise bad("parameters.binary_data_output: must be true or false")
    outputs_doc = doc.get("outputs")
    if outputs_doc is not None:
        if not isinstance(outputs_doc, list) or len(outputs_doc) > 16:
            raise bad("outputs: must be a list of at most 16 requested outputs")
        outputs = []
        for i, spec in enumerate(outputs_doc):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise bad(f"outputs[{i}]: a requested output is an object with a name")
            name = spec["name"]
            oparams = parameters(spec.get("parameters"), f"outputs.{name[:40]}.parameters")
            flag = oparams.get("binary_data", binary_default)
            if type(flag) is not bool:
                raise bad(f"outputs.{name[:40]}.parameters.binary_data: must be true or false")
            if "classification" in oparams:
                raise bad(f"outputs.{name[:40]}.parameters.classification: not supported")
            if flag:
                binary_outputs.add(name)
            outputs.append(name)
    return InferRequest(request_id, params, inputs, outputs, binary_outputs, binary_default)


def parameters(value, where: str) -> dict:
    """A parameters object: string keys, bool / number / string values."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{where}: must be a JSON object")
    if len(value) > 64:
        raise bad(f"{where}: more than 64 parameters")
    for key, v in value.items():
        if not isinstance(v, (bool, int, float, str)):
            raise bad(f"{where}.{key[:40]}: a parameter is a bool, number or string")
    return value


def tensor_header(spec: dict, where: str, max_elements: int) -> tuple[str, str, tuple]:
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise bad(f"{where}.name: a tensor needs a name (a string of 1-64 characters)")
    where = f"inputs.{name}"
    if not isinstance(datatype, str) or datatype not in DTYPES:  # a list is unhashable
        shown = datatype[:20] if isinstance(datatype, str) else type(datatype).__name__
        raise bad(f"{where}.datatype: {shown!r} is not one of {', '.join(DTYPES)}")
    return name, datatype, check_shape(shape, where, max_elements)


def check_shape(shape, where: str, max_elements: int) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS:
        raise bad(f"{where}.shape: a list of at most {MAX_DIMS} sizes")
    if not all(type(d) is int and 0 <= d <= max_elements for d in shape):
        raise bad(f"{where}.shape: sizes are ints in 0..{max_elements}, got {str(shape)[:60]}")
    if math.prod(shape) > max_elements:
        raise bad(f"{where}.shape: {math.prod(shape)} values exceed this server's limit")
    return tuple(shape)


def from_bytes(raw, datatype: str, shape: tuple, where: str) -> np.ndarray:
    dtype = DTYPES[datatype]
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise bad(
            f"{where}: {len(raw)} bytes of data for shape {list(shape)} of {datatype} "
            f"({count * dtype.itemsize} expected)"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def from_json(data, datatype: str, shape: tuple, where: str) -> np.ndarray:
    """JSON ``data`` (flat, or nested row-major) -> an array of the datatype's dtype."""
    flat = _flatten(data, where, math.prod(shape))
    if len(flat) != math.prod(shape):
        raise bad(f"{where}.data: {len(flat)} values for shape {list(shape)}")
    dtype = DTYPES[datatype]
    if dtype.kind == "b":
        if not all(type(v) is bool for v in flat):
            raise bad(f"{where}.data: BOOL values are true or false")
    elif dtype.kind in "iu":
        if not all(type(v) is int for v in flat):
            raise bad(f"{where}.data: {datatype} values are integers")
        info = np.iinfo(dtype)
        if flat and not (info.min <= min(flat) and max(flat) <= info.max):
            raise bad(f"{where}.data: values out of the range of {datatype}")
    elif not all(type(v) in (int, float) for v in flat):
        raise bad(f"{where}.data: {datatype} values are numbers")
    try:
        return np.array(flat, dtype=dtype).reshape(shape)
    except OverflowError:  # an int beyond any float (10**400) for a float datatype
        raise bad(f"{where}.data: values out of the range of {datatype}") from None


def _flatten(data, where: str, expected: int) -> list:
    if not isinstance(data, list):
        raise bad(f"{where}.data: must be a list")
    if not any(isinstance(v, list) for v in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested body cannot exhaust the Python stack
        for v in stack[-1]:
            if isinstance(v, list):
                if len(stack) > MAX_DIMS:
                    raise bad(f"{where}.data: nested deeper than {MAX_DIMS} levels")
                stack.append(iter(v))
                break
            out.append(v)
            if len(out) > expected:
                raise bad(f"{where}.data: more values than its shape holds")
        else:
            stack.pop()
    return out


# Responses ---------------------------------------------------------------------------------
def response_json(
    model: str, version: str, request_id: str | None, outputs: dict[str, np.ndarray],
    binary: set[str],
) -> tuple[bytes, int | None]:  # fmt: skip
    """The HTTP response body and, with binary outputs, its JSON header's length."""
    described, blobs = [], []
    for name, array in outputs.items():
        spec = {"name": name, "datatype": DATATYPES[array.dtype], "shape": list(array.shape)}
        if name in binary:
            blob = np.ascontiguousarray(array).tobytes()
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            spec["data"] = array.ravel().tolist()
        described.append(spec)
    doc = {"model_name": model, "model_version": version, "outputs": described}
    if request_id is not None:
        doc["id"] = request_id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
