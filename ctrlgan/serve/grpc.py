"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``) on grpc.aio,
in the same event loop and over the same model table as the HTTP app.

The messages come from proto/inference.proto, compiled to proto/inference.desc and loaded into a
private descriptor pool (see the .proto's header). Inputs are read from ``raw_input_contents``
(what tritonclient.grpc sends) or from typed ``contents``; outputs are written to
``raw_output_contents`` (the only place tritonclient.grpc reads them). Request parameters:
``timeout`` (microseconds, int64 or uint64) bounds the queue wait like the gRPC deadline does;
``priority`` is accepted and ignored. Errors map to status codes: INVALID_ARGUMENT (400, 413),
NOT_FOUND, UNAUTHENTICATED (``authorization: Bearer <key>`` metadata; health RPCs stay open),
RESOURCE_EXHAUSTED (queue full), UNAVAILABLE (draining), DEADLINE_EXCEEDED, INTERNAL (a bug,
logged).
"""

from __future__ import annotations

import errno
import logging
import time
from importlib import resources

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ctrlgan.errors import InvalidRequest, Overloaded
from ctrlgan.serve import protocol
from ctrlgan.serve.app import check_key
from ctrlgan.serve.models import VERSION, check_outputs, outputs
from ctrlgan.serve.protocol import DATATYPES, DTYPES, ProtocolError, Tensor, bad

log = logging.getLogger("ctrlgan.serve")
SERVICE = "inference.GRPCInferenceService"
# typed contents field of each datatype (InferTensorContents)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
            "FP32": "fp32_contents", "FP64": "fp64_contents"}  # fmt: skip
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.INVALID_ARGUMENT,
         415: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
         503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}  # fmt: skip


def _messages() -> dict[str, type]:
    data = resources.files("ctrlgan.serve").joinpath("proto/inference.desc").read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    service = pool.FindServiceByName(SERVICE)
    out = {}
    for method in service.methods:
        out[method.name] = (
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
        )
    return out


MESSAGES = _messages()


def param_value(p):
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


class Service:
    """The RPC handlers over an App's model table, state, key and metrics."""

    def __init__(self, app):
        self.app = app

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {}
        for name, (request, response) in MESSAGES.items():
            methods[name] = grpc.unary_unary_rpc_method_handler(
                self._wrap(name, getattr(self, name)),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _wrap(self, name: str, method):
        response_type = MESSAGES[name][1]
        open_rpc = name in ("ServerLive", "ServerReady")  # health: ModelReady names models

        async def call(request, context):
            start = time.perf_counter()
            status = "OK"
            model = getattr(request, "model_name", None) or getattr(request, "name", "")
            try:
                if self.app.key is not None and not open_rpc:
                    self.authorize(context)
                return await method(request, context, response_type)
            except Exception as error:
                code, message = self.status(error)
                status = code.name
                await context.abort(code, message)
            finally:
                label = model if model in self.app.table.models else ""
                self.app.metrics.request(label, "grpc", name, status, time.perf_counter() - start)

        return call

    def status(self, error: Exception) -> tuple[grpc.StatusCode, str]:
        if isinstance(error, ProtocolError):
            return CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message
        if isinstance(error, InvalidRequest):
            return grpc.StatusCode.INVALID_ARGUMENT, str(error)
        if isinstance(error, Overloaded):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
        if isinstance(error, TimeoutError):
            return grpc.StatusCode.DEADLINE_EXCEEDED, str(error) or "timed out before it ran"
        log.exception("internal error")
        return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__})"

    def authorize(self, context) -> None:
        given = dict(context.invocation_metadata() or ()).get("authorization")
        check_key(None if given is None else given.encode(), self.app.key)

    # RPCs ---------------------------------------------------------------------------------
    async def ServerLive(self, request, context, response):
        return response(live=True)

    async def ServerReady(self, request, context, response):
        return response(ready=self.app.state.serving)

    async def ModelReady(self, request, context, response):
        self.app.model(request.name, request.version or None)
        return response(ready=self.app.state.serving)

    async def ServerMetadata(self, request, context, response):
        return response(**self.app.metadata)

    async def ModelMetadata(self, request, context, response):
        meta = self.app.model(request.name, request.version or None).metadata()
        out = response(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                getattr(out, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for key, value in meta["parameters"].items():
            out.parameters[key].string_param = value
        return out

    async def ModelInfer(self, request, context, response):
        app = self.app
        model = app.model(request.model_name, request.model_version or None)
        with app.state.accepted():
            params = {k: param_value(v) for k, v in request.parameters.items()}
            inputs = self.inputs(request, model.max_elements)
            wanted = [o.name for o in request.outputs] or None
            check_outputs(wanted)
            # the client's deadline (seconds left; None without one) bounds the queue wait too
            timeout = app.timeout(params, context.time_remaining())
            images = await model.infer(inputs, timeout)
            result = outputs(images, wanted)
        out = response(model_name=model.name, model_version=VERSION, id=request.id)
        for name, array in result.items():
            out.outputs.add(name=name, datatype=DATATYPES[array.dtype], shape=array.shape)
            out.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
        return out

    def inputs(self, request, max_elements: int) -> dict[str, Tensor]:
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise bad(f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs")
        if len(request.inputs) > 16:
            raise bad(f"inputs: {len(request.inputs)} tensors; this server's models take 4")
        out = {}
        for i, spec in enumerate(request.inputs):
            header = {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
            _, _, shape = protocol.tensor_header(header, f"inputs[{i}]", max_elements)
            where = f"inputs.{spec.name}"
            if spec.name in out:
                raise bad(f"{where}: given twice")
            if raw:
                data = protocol.from_bytes(raw[i], spec.datatype, shape, where)
            else:
                field = CONTENTS.get(spec.datatype)
                if field is None:
                    raise bad(f"{where}: {spec.datatype} travels in raw_input_contents")
                values = getattr(spec.contents, field)
                if len(values) != int(np.prod(shape)):
                    raise bad(f"{where}.contents: {len(values)} values for shape {list(shape)}")
                try:
                    data = np.array(values, dtype=DTYPES[spec.datatype]).reshape(shape)
                except OverflowError:
                    raise bad(
                        f"{where}.contents: values out of the range of {spec.datatype}"
                    ) from None
            out[spec.name] = Tensor(spec.name, spec.datatype, shape, data)
        return out


def create_server(app, address: str, max_message_bytes: int) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server for ``app`` listening on ``address`` (host:port), not started, and
    the port it bound (``address`` may ask for port 0)."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max(max_message_bytes, 256 << 20)),
        ("grpc.so_reuseport", 0),
    ])  # fmt: skip
    server.add_generic_rpc_handlers((Service(app).handler(),))
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpc's "Failed to bind"
        port = 0
    if port == 0:
        raise OSError(errno.EADDRINUSE, f"cannot listen on {address} for gRPC (in use?)")
    return server, port
