"""Polls every node's ``/metrics`` page into the :class:`~router.fleet.table.NodeTable`.

Each node has its own polling task, so a slow or hung node never delays the others: every
fetch has its own timeout, and a node whose fetch overran its slot simply skips the ticks it
missed. Start offsets are spread over the interval so that N nodes are not fetched in one
burst. Failures (timeouts, HTTP errors, pages that do not parse) are recorded on the node's
table entry (:attr:`~router.fleet.table.NodeEntry.scrape_failures`, ``last_scrape_error``)
and never raised; the node's last good metrics stay in place and age, which policies see as
``metrics_age_s``. After each good scrape lands in the table, ``on_update(node, metrics)`` runs
(the router checks the node's engine configuration there); an exception it raises is logged and
never stops the polling.

:meth:`MetricsScraper.stop` is prompt: it wakes :meth:`MetricsScraper.run`, which cancels
every polling task (and the fetches in flight) and waits at most one interval for them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

from router.fleet.metrics import MetricsParseError, NodeMetrics, parse_node_metrics
from router.fleet.table import NodeTable

__all__ = ["Fetch", "HttpxFetch", "MetricsScraper", "OnUpdate"]

log = logging.getLogger("mufleet.router")

Fetch = Callable[[str], Awaitable[str]]
"""``url → page text``; raises on any failure."""
OnUpdate = Callable[[str, NodeMetrics], None]
"""``(node, metrics)``, called after a good scrape was recorded in the table."""


class HttpxFetch:
    """The default :data:`Fetch`: one shared ``httpx.AsyncClient`` for every node."""

    def __init__(self, timeout_s: float = 2.0, client: httpx.AsyncClient | None = None) -> None:
        self._own = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=1024),
        )

    async def __call__(self, url: str) -> str:
        response = await self._client.get(url)
        response.raise_for_status()
        return response.text

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()


class MetricsScraper:
    """Scrape every node of ``table`` each ``interval_s`` (``timeout_s`` per fetch).

    ``fetch`` defaults to an :class:`HttpxFetch` made (and closed) by :meth:`run`. ``clock``
    stamps the metrics (``scraped_at``) and the errors; it must be the clock the router passes
    as ``now`` to :meth:`NodeTable.snapshot`. ``on_update`` sees every good scrape the table
    accepted.
    """

    def __init__(
        self,
        table: NodeTable,
        fetch: Fetch | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        on_update: OnUpdate | None = None,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.table = table
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.on_update = on_update
        self._fetch = fetch
        self._stop_requested = False
        self._wake: asyncio.Event | None = None
        self._running = False
        self._polling = False
        self.attempts: dict[str, int] = dict.fromkeys(table.names, 0)
        """Scrapes attempted per node (good or not)."""

    @property
    def running(self) -> bool:
        return self._running

    def stop(self) -> None:
        """Ask :meth:`run` to return (call it from the event loop's thread). A stopped scraper
        stays stopped: a later :meth:`run` returns at once."""
        self._stop_requested = True
        if self._wake is not None:
            self._wake.set()

    async def scrape(self, node: str, fetch: Fetch | None = None) -> bool:
        """Fetch and record ``node``'s metrics once; returns whether it succeeded."""
        entry = self.table.entry(node)
        fetch = fetch or self._fetch
        if fetch is None:
            raise RuntimeError("no fetch: pass one, or call scrape() from within run()")
        self.attempts[node] = self.attempts.get(node, 0) + 1
        try:
            text = await self._fetch_within_timeout(fetch, entry.config.metrics_url)
            metrics = parse_node_metrics(text, self.clock(), model=entry.config.engine_model)
        except asyncio.TimeoutError:
            error = f"timeout after {self.timeout_s:g} s"
        except MetricsParseError as exc:
            error = f"bad metrics page: {exc}"
        except Exception as exc:  # any fetch failure is the node's, never the router's
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if self.table.update_metrics(node, metrics) and self.on_update is not None:
                try:
                    self.on_update(node, metrics)
                except Exception:
                    log.exception("handling the metrics of node %s failed", node)
            return True
        self.table.record_scrape_error(node, error, self.clock())
        return False

    async def _fetch_within_timeout(self, fetch: Fetch, url: str) -> str:
        if sys.version_info >= (3, 11):
            # Same task, no cancellation swallowed (3.11's wait_for can lose a cancel that
            # races with the fetch completing).
            async with asyncio.timeout(self.timeout_s):
                return await fetch(url)
        return await asyncio.wait_for(fetch(url), self.timeout_s)

    async def run(self) -> None:
        """Poll until :meth:`stop`; returns within one interval of it."""
        if self._running:
            raise RuntimeError("MetricsScraper.run is already running")
        if self._stop_requested:
            return
        self._running = True
        self._polling = True
        self._wake = asyncio.Event()
        own_fetch = None
        fetch = self._fetch
        if fetch is None:
            own_fetch = HttpxFetch(timeout_s=self.timeout_s)
            fetch = own_fetch
        names = self.table.names
        tasks = [
            asyncio.create_task(
                self._poll(name, fetch, i * self.interval_s / max(len(names), 1)),
                name=f"scrape:{name}",
            )
            for i, name in enumerate(names)
        ]
        try:
            await self._wake.wait()
        finally:
            self._polling = False  # a poll loop that missed its cancellation ends at its next tick
            for task in tasks:
                task.cancel()
            if tasks:
                # A fetch that swallows its cancellation is abandoned after one interval.
                await asyncio.wait(tasks, timeout=self.interval_s)
            if own_fetch is not None:
                await own_fetch.aclose()
            self._wake = None
            self._running = False

    async def _poll(self, node: str, fetch: Fetch, offset_s: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time() + offset_s
        await asyncio.sleep(offset_s)
        tick = 0
        while self._polling:
            await self.scrape(node, fetch)
            now = loop.time()
            # The next tick still ahead (ticks missed by a slow fetch are skipped).
            tick = max(tick + 1, math.floor((now - start) / self.interval_s) + 1)
            await asyncio.sleep(start + tick * self.interval_s - now)
