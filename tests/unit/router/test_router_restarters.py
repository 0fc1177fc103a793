"""Unit tests for router.health.restarters: configs, the registry, and each restarter
against a fake node side (httpx.MockTransport, a fake CoreV1Api)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic import TypeAdapter, ValidationError

from router.fleet.node_config import NodeConfig
from router.health.restarters import (
    RESTARTERS,
    BuildOptions,
    KubernetesConfig,
    KubernetesRestarter,
    ModelReloadConfig,
    ModelReloadRestarter,
    Restarter,
    RestarterConfig,
    RestarterKind,
    RestartResult,
    SupervisorConfig,
    SupervisorRestarter,
    build_restarter,
    build_restarters,
    parse_restarter_config,
)
from router.health.restarters.base import StrictConfig

NODE = NodeConfig.local(0, "pair")
Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


def _run(restarter: Restarter, node: NodeConfig = NODE) -> RestartResult:
    return asyncio.run(restarter.restart(node))


@dataclass
class FakeTriton:
    """A Triton HTTP endpoint whose answers per path a test chooses."""

    answers: dict[str, list[int]] = field(default_factory=dict)
    """path -> status codes answered in turn (the last one repeats); default 200."""
    calls: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        line = f"{request.method} {request.url.path}"
        self.calls.append(line)
        queue = self.answers.get(request.url.path, [200])
        status = queue.pop(0) if len(queue) > 1 else queue[0]
        body = {} if status == 200 else {"error": f"failed: {request.url.path}"}
        return httpx.Response(status, json=body)


def _reload(handler: Handler, **config: Any) -> ModelReloadRestarter:
    return ModelReloadRestarter(ModelReloadConfig(**config), transport=httpx.MockTransport(handler))


# --- configuration -------------------------------------------------------------------------


def test_configs_default_to_the_documented_values() -> None:
    reload = parse_restarter_config({"kind": "model_reload"})
    supervisor = parse_restarter_config({"kind": "supervisor"})
    kube = parse_restarter_config({"kind": "kubernetes"})

    assert reload == ModelReloadConfig(models=["tensorrt_llm"], timeout_s=120)
    assert reload.ready_models == ["ensemble"]
    assert supervisor == SupervisorConfig(
        url="http://127.0.0.1:9010", token_file=None, timeout_s=30
    )
    assert kube == KubernetesConfig(
        namespace="default", in_cluster=True, kubeconfig=None, grace_period_s=0, timeout_s=30
    )


def test_a_list_of_entries_is_parsed_by_kind() -> None:
    entries = TypeAdapter(list[RestarterConfig]).validate_python(
        [
            {"kind": "model_reload"},
            {"kind": "supervisor", "url": "http://127.0.0.1:9999/", "token_file": "/tmp/t"},
        ]
    )

    assert [type(e) for e in entries] == [ModelReloadConfig, SupervisorConfig]
    assert isinstance(entries[1], SupervisorConfig)
    assert entries[1].url == "http://127.0.0.1:9999"
    assert entries[1].token_file == Path("/tmp/t")


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"kind": "reboot"}, "reboot"),
        ({}, "kind"),
        ({"kind": "model_reload", "modles": ["x"]}, "modles"),
        ({"kind": "supervisor", "token": "abc"}, "token"),
        ({"kind": "kubernetes", "pod": "p"}, "pod"),
        ({"kind": "model_reload", "models": []}, "models"),
        ({"kind": "model_reload", "models": ["a", "a"]}, "distinct"),
        ({"kind": "model_reload", "timeout_s": 0}, "timeout_s"),
        ({"kind": "supervisor", "url": "127.0.0.1:9010"}, "url"),
        ({"kind": "kubernetes", "grace_period_s": -1}, "grace_period_s"),
        ({"kind": "kubernetes", "kubeconfig": "/k"}, "in_cluster"),
    ],
)
def test_bad_entries_are_refused_naming_the_problem(entry: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_restarter_config(entry)

    assert needle in str(info.value)


def test_configs_are_frozen() -> None:
    config = ModelReloadConfig()

    with pytest.raises(ValidationError):
        config.timeout_s = 1  # type: ignore[misc]


def test_node_config_names_its_pod_and_namespace() -> None:
    assert (NODE.pod, NODE.namespace) == (None, None)
    node = NodeConfig.local(1, "pair", pod="triton-1", namespace="gpu")
    assert (node.pod, node.namespace) == ("triton-1", "gpu")
    with pytest.raises(ValidationError):
        NodeConfig.local(1, "pair", pod="")


# --- registry ------------------------------------------------------------------------------


def test_every_registered_kind_matches_its_config() -> None:
    assert set(RESTARTERS) == {"model_reload", "supervisor", "kubernetes"}
    for kind, entry in RESTARTERS.items():
        config = parse_restarter_config({"kind": kind})
        assert type(config) is entry.config
        restarter = build_restarter(config, BuildOptions(kubernetes_api=FakePods()))
        assert isinstance(restarter, Restarter)
        assert restarter.name == kind


def test_build_restarters_keeps_the_order_and_passes_the_options() -> None:
    triton = FakeTriton()
    chain = build_restarters(
        [SupervisorConfig(), ModelReloadConfig(timeout_s=5)],
        BuildOptions(http_transport=httpx.MockTransport(triton)),
    )

    assert [type(r) for r in chain] == [SupervisorRestarter, ModelReloadRestarter]
    assert _run(chain[1]).ok
    assert triton.calls, "the injected transport carried the calls"


class EchoConfig(StrictConfig):
    kind: Literal["echo"] = "echo"


@dataclass
class EchoRestarter:
    name: str = "echo"

    async def restart(self, node: NodeConfig) -> RestartResult:
        return RestartResult(True, f"echo {node.name}", self.name)


def test_a_new_kind_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RESTARTERS, "echo", RestarterKind(EchoConfig, lambda c, o: EchoRestarter()))

    restarter = build_restarter(EchoConfig())  # type: ignore[arg-type]

    assert _run(restarter) == RestartResult(True, "echo node0", "echo")


def test_an_unregistered_config_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="known: model_reload"):
        build_restarter(EchoConfig())  # type: ignore[arg-type]


# --- model_reload --------------------------------------------------------------------------


def test_reload_unloads_then_loads_then_waits_for_readiness() -> None:
    triton = FakeTriton(answers={"/v2/models/ensemble/ready": [503, 503, 200]})

    result = _run(_reload(triton))

    assert result.ok, result
    assert result.restarter == "model_reload"
    assert "tensorrt_llm" in result.detail and "ensemble" in result.detail
    assert triton.calls == [
        "GET /v2/health/live",
        "POST /v2/repository/models/tensorrt_llm/unload",
        "POST /v2/repository/models/tensorrt_llm/load",
        "GET /v2/models/tensorrt_llm/ready",
        "GET /v2/models/ensemble/ready",
        "GET /v2/models/ensemble/ready",
        "GET /v2/models/ensemble/ready",
    ]


def test_reload_goes_model_by_model() -> None:
    triton = FakeTriton()

    assert _run(_reload(triton, models=["a", "b"], ready_models=[])).ok

    assert [c for c in triton.calls if "repository" in c] == [
        "POST /v2/repository/models/a/unload",
        "POST /v2/repository/models/a/load",
        "POST /v2/repository/models/b/unload",
        "POST /v2/repository/models/b/load",
    ]


def test_a_failed_load_is_reported_with_tritons_error() -> None:
    triton = FakeTriton(answers={"/v2/repository/models/tensorrt_llm/load": [400]})

    result = _run(_reload(triton))

    assert not result.ok
    assert "load tensorrt_llm answered 400" in result.detail
    assert "failed: /v2/repository/models/tensorrt_llm/load" in result.detail
    assert not any("ready" in c for c in triton.calls)


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        (httpx.ReadTimeout("timed out"), "frozen"),
        (httpx.ConnectError("refused"), "cannot connect"),
    ],
)
def test_an_unanswering_server_fails_at_the_liveness_check(error: Exception, needle: str) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise error

    result = _run(_reload(handler))

    assert not result.ok
    assert needle in result.detail and "/v2/health/live" in result.detail
    assert calls == ["/v2/health/live"], "nothing is unloaded on a server that does not answer"


def test_a_model_that_never_gets_ready_fails_within_the_timeout() -> None:
    triton = FakeTriton(answers={"/v2/models/ensemble/ready": [503]})

    result = _run(_reload(triton, timeout_s=0.5))

    assert not result.ok
    assert "not ready within 0.5s" in result.detail and "ensemble" in result.detail


def test_a_call_that_ignores_its_timeout_is_cut_by_the_outer_bound() -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    result = _run(_reload(never, timeout_s=0.2, call_timeout_s=0.1))

    assert not result.ok
    assert "no reload within 0.2s" in result.detail


# --- supervisor ----------------------------------------------------------------------------


def _supervisor(handler: Handler, **config: Any) -> SupervisorRestarter:
    return SupervisorRestarter(SupervisorConfig(**config), transport=httpx.MockTransport(handler))


def test_supervisor_posts_the_restart_with_the_token(tmp_path: Path) -> None:
    token = tmp_path / "supervisor.token"
    token.write_text("s3cret\n")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"name": "node0", "pid": 4242, "alive": True})

    result = _run(_supervisor(handler, url="http://127.0.0.1:9999", token_file=token))

    assert result.ok and "4242" in result.detail and result.restarter == "supervisor"
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://127.0.0.1:9999/nodes/node0/restart"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert isinstance(json.loads(request.content)["reason"], str)


def test_supervisor_without_a_token_file_sends_no_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    assert _run(_supervisor(handler)).ok
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("status", "needle"),
    [(401, "refused the token"), (404, "no node 'node0'"), (500, "answered 500: boom")],
)
def test_supervisor_refusals_are_not_ok(status: int, needle: str) -> None:
    result = _run(_supervisor(lambda r: httpx.Response(status, json={"error": "boom"})))

    assert not result.ok and needle in result.detail


def test_supervisor_with_an_unreadable_token_is_not_ok(tmp_path: Path) -> None:
    result = _run(_supervisor(FakeTriton(), token_file=tmp_path / "missing"))

    assert not result.ok and "cannot read the supervisor token" in result.detail


def test_supervisor_unreachable_or_silent_is_not_ok() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async def silent(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    down = _run(_supervisor(refused))
    frozen = _run(_supervisor(silent, timeout_s=0.2))

    assert not down.ok and "cannot connect" in down.detail
    assert not frozen.ok and "no answer in 0.2s" in frozen.detail


# --- kubernetes ----------------------------------------------------------------------------


@dataclass
class FakePods:
    """Stands in for CoreV1Api: records deletes, raises what a test asks for."""

    error: Exception | None = None
    release: threading.Event | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def delete_namespaced_pod(
        self, name: str, namespace: str, *, grace_period_seconds: int, _request_timeout: float
    ) -> object:
        self.calls.append(
            {
                "name": name,
                "namespace": namespace,
                "grace": grace_period_seconds,
                "timeout": _request_timeout,
            }
        )
        if self.release is not None:
            self.release.wait(timeout=10)
        if self.error is not None:
            raise self.error
        return {"kind": "Pod"}


def _kube(api: FakePods, **config: Any) -> KubernetesRestarter:
    return KubernetesRestarter(KubernetesConfig(**config), api=api)


def test_kubernetes_deletes_the_nodes_pod() -> None:
    api = FakePods()

    result = _run(_kube(api, namespace="fleet", grace_period_s=5, timeout_s=7))

    assert result.ok and "fleet/node0" in result.detail and result.restarter == "kubernetes"
    assert api.calls == [{"name": "node0", "namespace": "fleet", "grace": 5, "timeout": 7}]


def test_kubernetes_uses_the_nodes_own_pod_and_namespace() -> None:
    api = FakePods()
    node = NodeConfig.local(3, "pair", pod="triton-abc", namespace="gpu")

    assert _run(_kube(api), node).ok

    assert api.calls[0]["name"] == "triton-abc" and api.calls[0]["namespace"] == "gpu"
    assert api.calls[0]["grace"] == 0


def _api_error(status: int, message: str) -> ApiException:
    return ApiException(status=status, reason="Reason", body=json.dumps({"message": message}))


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        (_api_error(404, 'pods "node0" not found'), "pod default/node0 not found"),
        (_api_error(403, "cannot delete pods"), "forbidden; the router needs delete on pods"),
        (_api_error(500, "etcd is sad"), "answered 500: etcd is sad"),
        (ApiException(status=503, reason="Service Unavailable"), "503: Service Unavailable"),
        (urllib3.exceptions.ProtocolError("connection reset"), "cannot reach the API server"),
    ],
)
def test_kubernetes_errors_are_not_ok(error: Exception, needle: str) -> None:
    result = _run(_kube(FakePods(error=error)))

    assert not result.ok
    assert needle in result.detail


def test_kubernetes_call_that_hangs_is_bounded() -> None:
    release = threading.Event()
    api = FakePods(release=release)
    restarter = _kube(api, timeout_s=0.2)

    async def attempt() -> RestartResult:
        try:
            return await restarter.restart(NODE)
        finally:
            release.set()  # lets the worker thread end before the loop closes

    result = asyncio.run(attempt())

    assert not result.ok and "no answer in 0.2s" in result.detail
    assert len(api.calls) == 1


def test_kubernetes_outside_a_cluster_cannot_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)

    result = _run(KubernetesRestarter(KubernetesConfig()))

    assert not result.ok and "cannot configure the Kubernetes client" in result.detail


def test_kubernetes_with_a_missing_kubeconfig_cannot_configure(tmp_path: Path) -> None:
    config = KubernetesConfig(in_cluster=False, kubeconfig=tmp_path / "nope.yaml")

    result = _run(KubernetesRestarter(config))

    assert not result.ok and "cannot configure the Kubernetes client" in result.detail
