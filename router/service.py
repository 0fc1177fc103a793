"""The router service: wiring from configuration, the HTTP and gRPC servers, lifecycle.

``RouterService`` builds every plain object (cost models, admission, sessions, priorities,
policy, node table) from a :class:`router.config.RouterConfig`, then serves the front
doors on one asyncio loop: OpenAI and KServe v2 over HTTP (Starlette on uvicorn), KServe
v2 over gRPC (``grpcio`` aio), ``/metrics`` and ``/admin``. Background tasks scrape the
nodes' metrics and expire agent sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tritonclient.grpc import service_pb2

from router.admission import Admission, PriorityMapper, SessionError, SessionTable
from router.api.admin import AdminFront
from router.api.common import KeyRing
from router.api.kserve_http import KServeHttpFront
from router.api.openai import OpenAIFront
from router.config import RouterConfig
from router.cost_model import CostModel, PairProfile
from router.errors import BadRequest, NoCapacity, NotFound, RouterError
from router.fleet import EngineCheck, HttpxFetch, MetricsScraper, NodeMetrics, NodeTable
from router.health.build import build_health
from router.health.monitor import HealthMonitor
from router.metrics import RouterMetrics
from router.models import ServedModel
from router.output_length import OutputLengthEstimator
from router.pipeline import PRIORITY_PARAMETER, Job, Pipeline, PipelineSettings
from router.policies import build_policy
from router.upstream import NodeCallError, NodeChannel
from router.wire import add_input, read_input, set_json_parameter

log = logging.getLogger("mufleet.router")

TRITON_FRONTS = ("ensemble", "tensorrt_llm_bls", "tensorrt_llm")
"""The nodes' models a KServe client may call through the router."""
_DTYPES = {
    "TYPE_BOOL": np.bool_,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_UINT64": np.uint64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_STRING": np.object_,
    "TYPE_UINT8": np.uint8,
}


class RouterService:
    """Everything one router process runs."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.metrics = RouterMetrics()
        self.keys = KeyRing(config.tenants, config.admin_token.get_secret_value())
        self.tenants = {t.name: t for t in config.tenants}
        self.models = {m.name: ServedModel(m) for m in config.models}
        pairs = {n.pair for n in config.nodes}
        self.costs = {p: CostModel(PairProfile.load(config.pair_profile_path(p))) for p in pairs}
        self.table = NodeTable(config.nodes, lambda pair: self.costs[pair].capacity_mu_s)
        self.channels = {n.name: NodeChannel(n.name, n.grpc_url) for n in config.nodes}
        self.sessions = SessionTable(config.sessions)
        self.admission = Admission(config.admission)
        self.pipeline = Pipeline(
            table=self.table,
            channels=self.channels,
            node_pairs={n.name: n.pair for n in config.nodes},
            costs=self.costs,
            policy=build_policy(config.policy.name, config.policy.params),
            policy_name=config.policy.name,
            admission=self.admission,
            sessions=self.sessions,
            priorities=PriorityMapper(config.priority),
            estimator=OutputLengthEstimator(),
            metrics=self.metrics,
            settings=PipelineSettings(
                failover=config.failover, request_timeout_s=config.limits.request_timeout_s
            ),
        )
        self._health_client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=1024)
        )
        self.monitor: HealthMonitor | None = None
        if config.health.enabled:
            self.monitor, passive = build_health(
                config.health,
                self.table,
                self.channels,
                next(iter(self.models.values())).vocab_size,
                self.metrics,
                self.pipeline.forwarder,
                self._health_client,
                PRIORITY_PARAMETER,
            )
            self.pipeline.forwarder.sink = passive
        self.engine_check = EngineCheck(
            {n.name: self.costs[n.pair].profile for n in config.nodes},
            untrusted=config.engine_check.untrusted_capacity_factor,
            enabled=config.engine_check.enabled,
        )
        for node in config.nodes:
            self.metrics.node_config_capacity_factor.labels(node.name).set(1.0)
        self._fetch = HttpxFetch()
        self.scraper = MetricsScraper(
            self.table,
            self._fetch,
            interval_s=config.scrape.interval_s,
            timeout_s=config.scrape.timeout_s,
            clock=time.monotonic,
            on_update=self._check_engine,
        )
        self._model_info: dict[tuple[str, str], dict[str, Any]] = {}
        self._configs: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _check_engine(self, node: str, metrics: NodeMetrics) -> None:
        """A good scrape landed: check a new engine record against the node's profile."""
        verdict = self.engine_check.observe(node, metrics.engine)
        if verdict is None:
            return
        self.table.set_config_factor(node, verdict.factor)
        for parameter in verdict.cleared:
            self.metrics.node_config_mismatch.labels(node, parameter).set(0.0)
        for mismatch in verdict.mismatches:
            self.metrics.node_config_mismatch.labels(node, mismatch.parameter).set(1.0)
        self.metrics.node_config_capacity_factor.labels(node).set(verdict.factor)
        if verdict.level is not None:
            fields = {**verdict.log_fields(), "unix_s": round(time.time(), 3)}
            log.log(verdict.level, json.dumps(fields))

    # -- facts the front doors ask for ------------------------------------------------------
    def served_models(self) -> list[str]:
        now = time.monotonic()
        served = {m for s in self.table.snapshot(now) if s.state.routable for m in s.models}
        return sorted(served & set(self.models))

    def triton_models(self) -> tuple[str, ...]:
        return TRITON_FRONTS

    def any_routable(self) -> bool:
        return any(s.state.routable for s in self.table.snapshot(time.monotonic()))

    def _node_for_info(self) -> NodeChannel:
        for snap in self.table.snapshot(time.monotonic()):
            if snap.state.routable:
                return self.channels[snap.name]
        raise NoCapacity("no node is available")

    async def model_info(self, model: str, method: str) -> dict[str, Any]:
        """A node's ``ModelMetadata`` or ``ModelConfig`` of ``model`` as JSON (cached)."""
        if model not in TRITON_FRONTS:
            raise NotFound(f"model {model!r} is not served here")
        key = (model, method)
        if key not in self._model_info:
            proto = await self.model_proto(model, method)
            body = json_format.MessageToDict(proto, preserving_proto_field_name=True)
            if method == "ModelConfig":
                body = body.get("config", body)
            else:
                for tensor in (*body.get("inputs", []), *body.get("outputs", [])):
                    tensor["shape"] = [int(d) for d in tensor.get("shape", [])]
            self._model_info[key] = body
        return self._model_info[key]

    async def model_proto(self, model: str, method: str) -> Any:
        if model not in TRITON_FRONTS:
            raise NotFound(f"model {model!r} is not served here")
        request_type = {
            "ModelMetadata": service_pb2.ModelMetadataRequest,
            "ModelConfig": service_pb2.ModelConfigRequest,
            "ModelReady": service_pb2.ModelReadyRequest,
        }[method]
        try:
            return await self._node_for_info().unary(method, request_type(name=model))
        except NodeCallError as exc:
            raise NoCapacity(f"cannot read {model} from a node: {exc.message}") from exc

    async def _config(self, model: str) -> Any:
        if model not in self._configs:
            self._configs[model] = (await self.model_proto(model, "ModelConfig")).config
        return self._configs[model]

    # -- turning KServe requests into jobs -----------------------------------------------------
    async def generate_request(
        self, model: str, body: Mapping[str, Any]
    ) -> service_pb2.ModelInferRequest:
        """Triton's ``/generate`` body (input values by name) as a protobuf request."""
        config = await self._config(model)
        inputs = {t.name: t for t in config.input}
        request = service_pb2.ModelInferRequest(model_name=model)
        for key, value in body.items():
            if key == "parameters" and isinstance(value, dict):
                for name, param in value.items():
                    set_json_parameter(request, name, param)
                continue
            spec = inputs.get(key)
            if spec is None:
                if isinstance(value, (bool, int, float, str)):
                    set_json_parameter(request, key, value)
                    continue
                raise BadRequest(f"unexpected input {key!r} for model {model}")
            dtype = _DTYPES.get(model_config_type(spec.data_type))
            if dtype is None:
                raise BadRequest(f"input {key} has a type /generate cannot carry")
            values = value if isinstance(value, list) else [value]
            if dtype is np.object_:
                array = np.array(
                    [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values],
                    dtype=object,
                )
            else:
                try:
                    array = np.asarray(values, dtype=dtype)
                except (TypeError, ValueError):
                    raise BadRequest(f"input {key} must be {spec.data_type}") from None
            add_input(request, key, array.reshape(1, -1))
        return request

    def job_from_proto(
        self, tenant: Any, request: service_pb2.ModelInferRequest, headers: Mapping[str, str]
    ) -> Job:
        """Price a KServe request by its tokens: text fronts by ``text_input``, the engine by
        ``input_ids``."""
        model_name = request.model_name
        if model_name not in TRITON_FRONTS:
            raise NotFound(f"model {model_name!r} is not served here; models: {TRITON_FRONTS}")
        model = self._served_for(headers)
        if model_name == "tensorrt_llm":
            ids_in = read_input(request, "input_ids")
            out_len = read_input(request, "request_output_len")
            if ids_in is None or out_len is None:
                raise BadRequest("tensorrt_llm needs input_ids and request_output_len")
            ids = [int(t) for t in np.asarray(ids_in).reshape(-1)]
            max_tokens = int(np.asarray(out_len).sum())
        else:
            text = read_input(request, "text_input")
            out_len = read_input(request, "max_tokens")
            if text is None:
                raise BadRequest("missing input text_input")
            if out_len is None:
                raise BadRequest("missing input max_tokens")
            rows = [model.encode(_text(row)) for row in np.asarray(text).reshape(-1)]
            lengths = [int(n) for n in np.asarray(out_len).reshape(-1)]
            if len(lengths) == len(rows):
                longest = max(len(r) + n for r, n in zip(rows, lengths, strict=True))
                if longest > model.max_context:
                    raise BadRequest(
                        f"a prompt plus its max_tokens needs {longest} tokens; the context "
                        f"window is {model.max_context}"
                    )
            ids = [t for row in rows for t in row]
            max_tokens = int(np.asarray(out_len).sum())
            n = read_input(request, "num_return_sequences")
            if n is not None and np.asarray(n).size:
                max_tokens *= max(int(np.asarray(n).reshape(-1)[0]), 1)
        if max_tokens < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}")
        if model_name == "tensorrt_llm" and len(ids) + max_tokens > model.max_context * max(
            int(np.asarray(ids_in).shape[0]) if np.asarray(ids_in).ndim > 1 else 1, 1
        ):
            raise BadRequest("the prompt plus max_tokens exceeds the context window")
        priority = request.parameters.get("priority")
        timeout = request.parameters.get("timeout")
        timeout_us = _param_int(timeout)
        limit_us = int(self.config.limits.request_timeout_s * 1e6)
        if timeout_us is not None and not 0 <= timeout_us <= limit_us:
            raise BadRequest(f"timeout must lie in [0, {limit_us}] microseconds, got {timeout_us}")
        session = headers.get("x-session-id")
        if session is None and "session_id" in request.parameters:
            session = request.parameters["session_id"].string_param or None
        if session is not None and (
            self.sessions.get(session, time.monotonic(), tenant=tenant.name) is None
        ):
            raise NotFound(f"session {session!r} does not exist or has expired")
        job = Job(
            tenant=tenant,
            model=model,
            request=request,
            prompt_ids=ids,
            max_tokens=max_tokens,
            session_id=session,
            requested_priority=_param_int(priority),
            timeout_s=(timeout_us or 0) / 1e6 or None,
        )
        _ask_for_token_counts(request)
        return job

    def _served_for(self, headers: Mapping[str, str]) -> ServedModel:
        name = headers.get("x-mufleet-model")
        if name is None:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise NotFound(f"model {name!r} is not served here")
        return self.models[name]

    # -- sessions ----------------------------------------------------------------------------
    async def open_session(self, request: Request) -> Response:
        from router.api.common import JSONResponse, openai_error, parse_json, read_body

        try:
            tenant = self.keys.tenant(request.headers.get("authorization"))
            raw = await read_body(request, 64 << 10)
            body = parse_json(raw) if raw else {}
            if not isinstance(body, dict):
                raise BadRequest("a session request is a JSON object")
            session = self.sessions.open(
                tenant,
                _opt_float(body.get("budget_mu")),
                _opt_float(body.get("ttl_s")),
                time.monotonic(),
            )
        except SessionError as exc:
            status = getattr(exc, "status_code", 400)
            return JSONResponse({"error": {"message": str(exc)}}, status_code=status)
        except RouterError as error:
            return openai_error(error)
        return JSONResponse({"id": session.session_id, **session.as_dict()}, status_code=201)

    async def close_session(self, request: Request) -> Response:
        from router.api.common import JSONResponse, openai_error

        try:
            tenant = self.keys.tenant(request.headers.get("authorization"))
            session_id = request.path_params["session"]
            session = self.sessions.get(session_id, time.monotonic(), tenant=tenant.name)
            if session is None:
                raise NotFound(f"session {session_id!r} does not exist")
            self.sessions.close(session_id)
        except RouterError as error:
            return openai_error(error)
        return JSONResponse({"id": session.session_id, **session.as_dict()})

    # -- serving -------------------------------------------------------------------------------
    def app(self) -> Starlette:
        openai = OpenAIFront(self)
        kserve = KServeHttpFront(self)
        admin = AdminFront(self)

        async def metrics(request: Request) -> Response:
            return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4")

        routes = [
            Route("/v1/chat/completions", openai.chat, methods=["POST"]),
            Route("/v1/completions", openai.completions, methods=["POST"]),
            Route("/v1/models", openai.models, methods=["GET"]),
            Route("/v1/sessions", self.open_session, methods=["POST"]),
            Route("/v1/sessions/{session}", self.close_session, methods=["DELETE"]),
            Route("/v2/health/live", kserve.live, methods=["GET"]),
            Route("/v2/health/ready", kserve.ready, methods=["GET"]),
            Route("/v2/models/{model}", kserve.metadata, methods=["GET"]),
            Route("/v2/models/{model}/ready", kserve.model_ready, methods=["GET"]),
            Route("/v2/models/{model}/config", kserve.config, methods=["GET"]),
            Route("/v2/models/{model}/infer", kserve.infer, methods=["POST"]),
            Route("/v2/models/{model}/generate", kserve.generate, methods=["POST"]),
            Route("/v2/models/{model}/generate_stream", kserve.generate_stream, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            *admin.routes(),
        ]
        return Starlette(routes=routes)

    async def start_background(self) -> None:
        self._tasks.append(asyncio.create_task(self.scraper.run(), name="scrape"))
        self._tasks.append(asyncio.create_task(self._expire_sessions(), name="sessions"))
        if self.monitor is not None:
            self._tasks.append(asyncio.create_task(self.monitor.run(), name="health"))

    async def _expire_sessions(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sessions.expire(time.monotonic())

    async def stop_background(self) -> None:
        self.scraper.stop()
        if self.monitor is not None:
            self.monitor.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for channel in self.channels.values():
            await channel.close()
        await self._fetch.aclose()
        await self._health_client.aclose()


def _ask_for_token_counts(request: service_pb2.ModelInferRequest) -> None:
    """Have the node report each sequence's generated-token count (the router bills it)."""
    if read_input(request, "return_num_output_tokens") is None:
        rows_of = read_input(request, "text_input")
        if rows_of is None:
            rows_of = read_input(request, "input_ids")
        rows = int(np.asarray(rows_of).shape[0]) if rows_of is not None else 1
        if request.inputs and not request.raw_input_contents:  # typed contents: stay typed
            tensor = request.inputs.add(name="return_num_output_tokens", datatype="BOOL")
            tensor.shape.extend([rows, 1])
            tensor.contents.bool_contents.extend([True] * rows)
        else:
            add_input(request, "return_num_output_tokens", np.ones((rows, 1), dtype=bool))
    if request.outputs and not any(o.name == "num_output_tokens" for o in request.outputs):
        request.outputs.add().name = "num_output_tokens"


def model_config_type(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.DataType.Name(value))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("text_input must be valid UTF-8") from None
    return str(value)


def _param_int(param: Any) -> int | None:
    if param is None:
        return None
    kind = param.WhichOneof("parameter_choice")
    if kind in ("int64_param", "uint64_param"):
        return int(getattr(param, kind))
    return None


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest("budget_mu and ttl_s must be numbers")
    return float(value)
