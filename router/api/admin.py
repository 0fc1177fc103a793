"""``/admin``: the fleet's nodes and the tenants' MU ledgers, behind the admin token."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.api.common import JSONResponse, openai_error
from router.errors import NotFound, RouterError
from router.fleet import UnknownNodeError


class AdminFront:
    """Operator endpoints over a :class:`router.service.RouterService`."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def routes(self) -> list[Route]:
        return [
            Route("/admin/nodes", self.nodes, methods=["GET"]),
            Route("/admin/nodes/{node}/{action}", self.act, methods=["POST"]),
            Route("/admin/tenants", self.tenants, methods=["GET"]),
        ]

    async def nodes(self, request: Request) -> Response:
        try:
            self.service.keys.admin(request.headers.get("authorization"))
        except RouterError as error:
            return openai_error(error)
        return JSONResponse({"nodes": self.node_views(time.monotonic())})

    def node_views(self, now: float) -> list[dict[str, Any]]:
        """The table's view of every node, with its engine configuration check (the
        profile's record, the mismatches), the health machine's verdicts and the node's
        recent transitions (``at`` on the router's monotonic clock)."""
        table = self.service.table
        monitor = getattr(self.service, "monitor", None)
        check = getattr(self.service, "engine_check", None)
        views = table.admin_view(now)
        for view in views:
            name = view["name"]
            if check is not None:
                view.update(check.view(name))
            if monitor is not None:
                view["health"] = monitor.machine.view(name, now)
                view["panic"] = monitor.machine.panic()
            view["history"] = [
                {"at": t.at, "from": t.from_state.value, "to": t.to_state.value, "reason": t.reason}
                for t in table.history(name)[-16:]
            ]
        return views

    async def act(self, request: Request) -> Response:
        """``cordon`` (no new work), ``drain`` (no new work, let in-flight finish),
        ``uncordon`` (back in rotation)."""
        try:
            self.service.keys.admin(request.headers.get("authorization"))
            node, action = request.path_params["node"], request.path_params["action"]
            reason = request.query_params.get("reason") or action
            now = time.monotonic()
            table = self.service.table
            if action == "cordon":
                table.cordon(node, reason, now)
            elif action == "drain":
                table.drain(node, reason, now)
            elif action == "uncordon":
                table.uncordon(node, now)
            else:
                raise NotFound(f"unknown action {action!r}: cordon, drain or uncordon")
        except UnknownNodeError as exc:
            return openai_error(NotFound(str(exc)))
        except RouterError as error:
            return openai_error(error)
        view = [n for n in self.node_views(time.monotonic()) if n["name"] == node]
        return JSONResponse(view[0])

    async def tenants(self, request: Request) -> Response:
        try:
            self.service.keys.admin(request.headers.get("authorization"))
        except RouterError as error:
            return openai_error(error)
        now = time.monotonic()
        ledgers = self.service.admission.ledgers(now)
        tenants = []
        for tenant in self.service.config.tenants:
            entry: dict[str, Any] = {
                "name": tenant.name,
                "tier": tenant.tier,
                "reserved_mu_s": tenant.reserved_mu_s,
                "burst_mu": tenant.burst_mu,
                "sessions": self.service.sessions.count(tenant.name),
            }
            entry["ledger"] = ledgers.get(tenant.name, {})
            tenants.append(entry)
        return JSONResponse({"tenants": tenants})
