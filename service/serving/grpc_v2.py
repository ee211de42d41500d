"""Open Inference Protocol v2 over gRPC: the KServe / Triton ``GRPCInferenceService``.

The same data plane as the HTTP routes (:mod:`service.serving.routes`), beside them on a port of
its own (``SLIMSERVE_GRPC_PORT``; 0: off), on the worker's own event loop, so a request over
gRPC queues and batches with the HTTP ones. ``tritonclient.grpc`` works against it, and so does
any client generated from the protocol's ``grpc_service.proto`` (the messages used here are
those ``tritonclient`` ships, ``inference.*``).

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer
(inputs as ``raw_input_contents`` or typed ``contents``; outputs as ``raw_output_contents``,
what Triton answers). Every other method of the service answers UNIMPLEMENTED.

Errors are the HTTP ones in gRPC's words (:data:`CODES`): a bad tensor INVALID_ARGUMENT, an
unknown model NOT_FOUND, a full queue UNAVAILABLE, a request over the row cap or the message
limit RESOURCE_EXHAUSTED; the message says what was expected, as the HTTP body does.
"""

from __future__ import annotations

import logging
import math

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from service.serving import v2
from service.serving.errors import ServiceError, printable
from service.serving.v2.binary import binary_tensor
from service.serving.v2.json_data import json_tensor
from service.serving.v2.response import as_datatype, wire_bytes
from service.serving.v2.schema import V2Error, shape_str

log = logging.getLogger("slimserve.grpc")

# An HTTP status of the service's errors -> the gRPC status code that means the same.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# The typed ``contents`` field that carries each datatype (when no raw contents are sent).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The v2 gRPC methods over a :class:`~service.serving.core.Core`'s data plane."""

    def __init__(self, core) -> None:
        self.core = core

    async def ServerLive(self, request, context):  # noqa: N802 (the protocol's names)
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=bool(self.core.ready))

    async def ServerMetadata(self, request, context):  # noqa: N802
        meta = v2.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelReady(self, request, context):  # noqa: N802
        await self._call(context, self._served, request.name, request.version)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):  # noqa: N802
        served = await self._call(context, self._served, request.name, request.version)
        sig = served.adapter.signature

        def tensors(specs):
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=t.datatype, shape=list(t.shape)
                )
                for t in specs
            ]

        return pb.ModelMetadataResponse(
            name=sig.name,
            versions=list(sig.versions),
            platform=sig.platform,
            inputs=tensors(sig.inputs),
            outputs=tensors(sig.outputs),
        )

    async def ModelInfer(self, request, context):  # noqa: N802
        try:
            return await self._infer(request, context)
        except ServiceError as err:
            if 400 <= err.status < 500:
                self.core.plane.count_client_error(request.model_name)
            await _abort(context, err)

    # ---- helpers --------------------------------------------------------------------------------

    def _served(self, name: str, version: str):
        served = self.core.plane.served(name)
        v2.check_version(served.adapter.signature, version)
        return served

    async def _call(self, context, fn, *args):
        try:
            return fn(*args)
        except ServiceError as err:
            await _abort(context, err)

    async def _infer(self, request, context):
        served = self._served(request.model_name, request.model_version)
        sig = served.adapter.signature
        inputs = decode_inputs(request, sig)
        for out in request.outputs:
            if sig.output(out.name) is None:
                raise V2Error(
                    f"unknown output '{out.name}'; model '{sig.name}' has outputs "
                    f"{sig.output_names}"
                )
        rows = served.adapter.sample_rows(inputs)
        out, active = await self.core.plane.infer(request.model_name, rows)
        spec = sig.output(served.adapter.output_name)
        arr = as_datatype(spec.name, out, spec.datatype)
        context.set_trailing_metadata((("x-slimserve-variant", active.variant),))
        return pb.ModelInferResponse(
            model_name=request.model_name,
            model_version="1",
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name=spec.name, datatype=spec.datatype, shape=[int(d) for d in arr.shape]
                )
            ],
            raw_output_contents=[wire_bytes(arr, spec.datatype)],
        )


def decode_inputs(request, sig) -> dict[str, np.ndarray]:
    """Every input of a ``ModelInferRequest`` as a checked array (the HTTP codec's checks)."""
    expected = [t.describe() for t in sig.inputs]
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise V2Error(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs; "
            "expected one per input, in order"
        )
    if not request.inputs:
        raise V2Error(f"the request has no inputs; model '{sig.name}' expects {expected}")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        spec = sig.input(tensor.name)
        if spec is None:
            raise V2Error(f"unknown input '{tensor.name}'; model '{sig.name}' expects {expected}")
        if tensor.name in inputs:
            raise V2Error(f"input '{tensor.name}' appears more than once")
        if tensor.datatype != spec.datatype:
            raise V2Error(
                f"input '{tensor.name}': expected datatype {spec.datatype}, got "
                f"{printable(tensor.datatype)[:20] or 'none'}"
            )
        shape = list(tensor.shape)
        if (
            len(shape) != len(spec.shape)
            or any(s != -1 and s != d for s, d in zip(spec.shape, shape, strict=False))
            or any(d < 0 for d in shape)
        ):
            raise V2Error(
                f"input '{tensor.name}': expected shape {shape_str(spec.shape)} (-1 = any), "
                f"got {shape_str(shape)}"
            )
        count = math.prod(shape)
        if raw:
            inputs[tensor.name] = binary_tensor(tensor.name, spec, memoryview(raw[i]), shape, count)
            continue
        field = CONTENTS.get(spec.datatype)
        values = list(getattr(tensor.contents, field)) if field else []
        if spec.datatype == "BYTES":
            values = [v.decode("utf-8", "replace") for v in values]
        inputs[tensor.name] = json_tensor(tensor.name, spec, values, shape, count)
    missing = [t.name for t in sig.inputs if not t.optional and t.name not in inputs]
    if missing:
        raise V2Error(f"missing input(s) {missing}; model '{sig.name}' expects inputs {expected}")
    return inputs


async def _abort(context, err: ServiceError) -> None:
    code = CODES.get(err.status, grpc.StatusCode.INTERNAL)
    await context.abort(code, err.message)


class GrpcServer:
    """The gRPC server of one worker, on the worker's event loop."""

    def __init__(self, core, port: int, workers: int, max_message_bytes: int) -> None:
        self.core, self.port = core, port
        # Several workers of one service share the port (the kernel spreads connections); one
        # worker alone must not share it with some other server.
        options = [
            ("grpc.so_reuseport", 1 if workers > 1 else 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ]
        self.server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(core), self.server
        )
        self.bound: int | None = None

    async def start(self) -> int | None:
        """Listen on the port; None (logged) when it cannot be bound: HTTP serves regardless."""
        try:
            self.bound = self.server.add_insecure_port(f"[::]:{self.port}")
        except RuntimeError as err:
            log.warning("gRPC: cannot listen on port %d (%s); HTTP serves alone", self.port, err)
            return None
        await self.server.start()
        log.info("gRPC (Open Inference Protocol v2) on port %d", self.bound)
        return self.bound

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.server.stop(grace_s)
