"""The KServe v2 / Triton ``GRPCInferenceService`` next to the HTTP routes, in the same service processes.

BentoML 1.4 serves gRPC only for legacy ``bentoml.Service`` definitions (``bentoml serve-grpc`` refuses a
``@bentoml.service`` class: "type doesn't support gRPC serving", bentoml/BentoML#4634, #5607), so each API worker of
:class:`~service.app.service.CNNServe` starts a ``grpc.aio`` server on its own event loop from its start-up hook, on
``CNNSERVE_GRPC_PORT`` (8001 by default, Triton's). With several API workers they all bind that port with
``SO_REUSEPORT`` and the kernel spreads connections over them, as BentoML's arbiter spreads HTTP ones; with one
worker the port is bound exclusively, so a second server on the same port fails loudly instead of sharing it.

The servicer answers from the worker's own :class:`~service.catalog.Catalog` (the same runners, so gRPC and HTTP
requests share batches) with :mod:`.oip`'s meaning of every call; it only translates protobuf. The messages are
Triton's own (``tritonclient.grpc.service_pb2`` / ``model_config_pb2``), so the stock clients read them unchanged.
Implemented: health, server and model metadata, model config, ``ModelInfer`` (``raw_input_contents`` or typed
``contents``; outputs as ``raw_output_contents``), ``ModelStreamInfer`` (each request answered as it completes),
model statistics and the repository index. Shared memory, model load/unload, trace and log settings answer
``UNIMPLEMENTED``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from ..errors import BadInput, PayloadTooLarge, ServeError
from . import oip
from .requests import megabytes
from .state import ServiceState
from .statistics import model_statistics

__all__ = ["InferenceServicer", "start_grpc_server"]

logger = logging.getLogger("cnnserve.grpc")

INFER_ROUTE = "grpc:ModelInfer"  # the `route` label of gRPC inferences in cnnserve_requests_total
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Typed contents (InferTensorContents) by datatype, for clients that do not send raw bytes.
_CONTENTS = {
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
}
# perf_analyzer's gRPC client sends this one; every answer here is a single, final response (no decoupled models),
# so it only marks that response final in a stream (``triton_final_response``), as Triton does.
_FINAL_RESPONSE = "triton_enable_empty_final_response"
_REQUEST_PARAMETERS = (_FINAL_RESPONSE,)
_UNIMPLEMENTED = (
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)


def _parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values."""
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param") for key, value in parameters.items()
    }


async def _abort(context: grpc.aio.ServicerContext, exc: ServeError) -> None:
    await context.abort(_STATUS.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: ServiceState) -> None:
        self.service = service  # read per call: with two tiers the catalog is filled in after start-up

    # --- health and metadata ------------------------------------------------------------------------------------

    async def ServerLive(self, request, context):  # noqa: N802 - gRPC method names
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=self.service.catalog.any_ready)

    async def ModelReady(self, request, context):  # noqa: N802
        try:
            runner = oip.find_runner(self.service.catalog, request.name, request.version)
        except ServeError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=runner.info.ready)

    async def ServerMetadata(self, request, context):  # noqa: N802
        return service_pb2.ServerMetadataResponse(
            name="cnnserve", version=oip.server_version(), extensions=list(oip.EXTENSIONS)
        )

    async def ModelMetadata(self, request, context):  # noqa: N802
        try:
            meta = oip.model_metadata(oip.find_runner(self.service.catalog, request.name, request.version))
        except ServeError as exc:
            return await _abort(context, exc)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelConfig(self, request, context):  # noqa: N802
        try:
            runner = oip.find_runner(self.service.catalog, request.name, request.version)
            config = oip.model_config(self.service.settings, runner)
        except ServeError as exc:
            return await _abort(context, exc)
        return service_pb2.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    async def ModelStatistics(self, request, context):  # noqa: N802
        catalog = self.service.catalog
        names = None
        if request.name:
            try:
                oip.find_runner(catalog, request.name, request.version).info.require_ready()
            except ServeError as exc:
                return await _abort(context, exc)
            names = [request.name]
        stats = model_statistics(catalog, names)
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):  # noqa: N802
        index = oip.repository_index(self.service.catalog, ready_only=request.ready)
        entry = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(models=[entry(**model) for model in index])

    # --- inference -----------------------------------------------------------------------------------------------

    async def _infer(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        """One request → its response, or a ServeError; counted in the metrics either way."""
        service = self.service
        label, status = "-", 200
        try:
            runner = oip.find_runner(service.catalog, request.model_name, request.model_version)
            label = runner.info.name
            runner.info.require_ready()
            with service.metrics.stage(label, "decode"):
                limits = oip.request_limits(runner.info, service.settings)
                if request.ByteSize() > limits.body_bytes:
                    raise PayloadTooLarge(
                        f"the request is {megabytes(request.ByteSize())}, over model {label!r}'s limit of "
                        f"{megabytes(limits.body_bytes)} (a full batch of its input)"
                    )
                oip.check_parameters(_parameters(request.parameters), _REQUEST_PARAMETERS, "the request")
                feed = _decode(runner, request, limits.elements)
                requested = oip.requested_outputs(runner, _requested(request))
            with service.metrics.stage(label, "inference"):
                outputs = await oip.infer(runner, feed, requested)
            with service.metrics.stage(label, "postprocess"):
                return _encode(request, runner.info.name, outputs)
        except ServeError as exc:
            status = exc.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            service.metrics.requests.labels(model=label, route=INFER_ROUTE, status=str(status)).inc()

    async def ModelInfer(self, request, context):  # noqa: N802
        try:
            return await self._infer(request)
        except ServeError as exc:
            return await _abort(context, exc)
        except Exception:  # a bug, not the client's fault: say so without details, log them, keep serving
            logger.exception("unexpected error in ModelInfer")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[Any]:  # noqa: N802
        """Requests of one stream run concurrently (so they batch together) and are answered as they complete."""
        answers: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def answer(request: service_pb2.ModelInferRequest) -> None:
            try:
                answer = await self._infer(request)
                if _parameters(request.parameters).get(_FINAL_RESPONSE):
                    answer.parameters["triton_final_response"].bool_param = True
                response = service_pb2.ModelStreamInferResponse(infer_response=answer)
            except ServeError as exc:
                response = service_pb2.ModelStreamInferResponse(error_message=exc.message)
            except Exception:
                logger.exception("unexpected error in a streamed inference")
                response = service_pb2.ModelStreamInferResponse(error_message="internal error; see the server log")
            await answers.put(response)

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.get_running_loop().create_task(answer(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*list(pending))
            await answers.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()


async def _unimplemented(self, request, context):
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented by cnnserve (see GET /v2 for what is)")


for _name in _UNIMPLEMENTED:
    setattr(InferenceServicer, _name, _unimplemented)


def _decode(runner: Any, request: service_pb2.ModelInferRequest, max_elements: int) -> dict[str, np.ndarray]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadInput("raw_input_contents must hold one entry per input")
    if not request.inputs:
        raise BadInput("the request has no inputs")
    feed: dict[str, np.ndarray] = {}
    total = 0
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        oip.check_parameters(_parameters(tensor.parameters), (), f"input {name!r}")
        dtype, shape = oip.check_input(runner, name, tensor.datatype, list(tensor.shape))
        total = oip.count_elements(shape, total, max_elements)
        count = int(np.prod(shape, dtype=np.int64))
        if raw:
            if len(raw[index]) != count * dtype.itemsize:
                raise BadInput(f"input {name!r}: {len(raw[index])} bytes for shape {shape} of {tensor.datatype}")
            array = np.frombuffer(raw[index], dtype=dtype).reshape(shape)
        else:
            field = _CONTENTS.get(tensor.datatype)
            values = getattr(tensor.contents, field) if field else ()
            if len(values) != count:
                raise BadInput(f"input {name!r}: {len(values)} values for shape {shape}; send raw_input_contents")
            array = np.asarray(values, dtype=dtype).reshape(shape)
        feed[name] = array
    return oip.complete_feed(runner, feed)


def _requested(request: service_pb2.ModelInferRequest) -> list[oip.Requested]:
    requested = []
    for output in request.outputs:
        params = oip.check_parameters(_parameters(output.parameters), ("classification",), f"output {output.name!r}")
        requested.append(oip.Requested(output.name, int(params.get("classification", 0))))
    return requested


def _encode(request: service_pb2.ModelInferRequest, name: str, outputs: list[oip.Output]) -> Any:
    response = service_pb2.ModelInferResponse(model_name=name, model_version=oip.MODEL_VERSION, id=request.id)
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=list(output.data.shape))
        raw = oip.serialize_bytes(output.data) if output.datatype == "BYTES" else output.data.tobytes()
        response.raw_output_contents.append(raw)
    return response


async def start_grpc_server(service: ServiceState, host: str, port: int, *, reuse_port: bool) -> grpc.aio.Server:
    """Serve ``GRPCInferenceService`` for ``service`` on ``host:port`` from this process's event loop."""
    # The largest message any served model takes (its request_limits); each request is checked against its own.
    largest = max(
        (oip.request_limits(info, service.settings).body_bytes for info in service.catalog if info.ready),
        default=oip.HEADER_SLACK,
    )
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", max(4 * 2**20, largest)),
            ("grpc.max_send_message_length", oip.MAX_MESSAGE_BYTES),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound, error = 0, exc
    else:
        error = None
    if not bound:
        raise RuntimeError(
            f"the gRPC server could not listen on {address} ({error or 'address in use'}); "
            "set CNNSERVE_GRPC_PORT to a free port, or 0 to serve HTTP only"
        )
    await server.start()
    logger.info("gRPC (KServe v2 GRPCInferenceService) listening on %s", address)
    return server
