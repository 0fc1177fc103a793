"""Restart a node on Kubernetes: delete its pod; the pod's controller creates a new one.

The official client is blocking, so each call runs in a worker thread, bounded both by
the client's own request timeout and by ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from pydantic import Field, model_validator

from router.fleet.node_config import NodeConfig
from router.health.restarters.base import RestartResult, StrictConfig

__all__ = ["KubernetesConfig", "KubernetesRestarter", "PodApi"]


class KubernetesConfig(StrictConfig):
    """``{kind: kubernetes}``: delete the node's pod (``NodeConfig.pod``, default its name)."""

    kind: Literal["kubernetes"] = "kubernetes"
    namespace: str = Field("default", min_length=1)
    """Used for nodes that do not name their own (``NodeConfig.namespace``)."""
    in_cluster: bool = True
    """Use the pod's service account; false: a kubeconfig file."""
    kubeconfig: Path | None = None
    """With ``in_cluster: false``; None: the client's default (``$KUBECONFIG``, ~/.kube)."""
    grace_period_s: int = Field(0, ge=0)
    """The pod's termination grace period; 0 kills it at once (it is already cordoned)."""
    timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _kubeconfig_needs_out_of_cluster(self) -> KubernetesConfig:
        if self.in_cluster and self.kubeconfig is not None:
            raise ValueError("kubeconfig is used only with in_cluster: false")
        return self


class PodApi(Protocol):
    """The part of ``kubernetes.client.CoreV1Api`` this restarter calls."""

    def delete_namespaced_pod(
        self,
        name: str,
        namespace: str,
        *,
        grace_period_seconds: int,
        _request_timeout: float,
    ) -> object: ...


def _api_message(exc: ApiException) -> str:
    """The API server's ``Status.message``, else its reason."""
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(exc.reason or "no reason given")


class KubernetesRestarter:
    """``delete_namespaced_pod``; ok once the API server accepted the delete."""

    name = "kubernetes"

    def __init__(self, config: KubernetesConfig, *, api: PodApi | None = None) -> None:
        self.config = config
        self._api = api
        self._api_lock = threading.Lock()

    def _result(self, ok: bool, detail: str) -> RestartResult:
        return RestartResult(ok=ok, detail=detail, restarter=self.name)

    def _pod_api(self) -> PodApi:
        """The injected API, else one made (once) from the in-cluster or kubeconfig settings."""
        with self._api_lock:
            if self._api is None:
                configuration = k8s_client.Configuration()
                if self.config.in_cluster:
                    k8s_config.load_incluster_config(client_configuration=configuration)
                else:
                    k8s_config.load_kube_config(
                        config_file=str(self.config.kubeconfig) if self.config.kubeconfig else None,
                        client_configuration=configuration,
                        persist_config=False,
                    )
                api: Any = k8s_client.CoreV1Api(k8s_client.ApiClient(configuration))
                self._api = cast(PodApi, api)
            return self._api

    def _delete(self, pod: str, namespace: str) -> None:
        self._pod_api().delete_namespaced_pod(
            pod,
            namespace,
            grace_period_seconds=self.config.grace_period_s,
            _request_timeout=self.config.timeout_s,
        )

    async def restart(self, node: NodeConfig) -> RestartResult:
        pod = node.pod or node.name
        namespace = node.namespace or self.config.namespace
        where = f"pod {namespace}/{pod}"
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self._delete, pod, namespace), self.config.timeout_s
            )
        except asyncio.TimeoutError:
            return self._result(False, f"{where}: no answer in {self.config.timeout_s:g}s")
        except k8s_config.ConfigException as exc:
            return self._result(False, f"cannot configure the Kubernetes client: {exc}")
        except ApiException as exc:
            if exc.status == 404:
                return self._result(
                    False, f"{where} not found (already gone, or the wrong pod name or namespace)"
                )
            if exc.status == 403:
                return self._result(
                    False,
                    f"{where}: forbidden; the router needs delete on pods: {_api_message(exc)}",
                )
            return self._result(
                False, f"{where}: the API server answered {exc.status}: {_api_message(exc)}"
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return self._result(False, f"{where}: cannot reach the API server: {exc}")
        return self._result(
            True,
            f"deleted {where} (grace {self.config.grace_period_s}s); its controller recreates it",
        )
