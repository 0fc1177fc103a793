"""Unit tests for router.fleet.scraper with fake fetches (no network, no Triton): concurrency
(a hung node does not hold up the others), error accounting, prompt stop, the httpx fetch."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from fleet_pages import ModelStats, triton_page

from router.fleet.scraper import HttpxFetch, MetricsScraper
from router.fleet.table import NodeConfig, NodeTable

INTERVAL = 0.05
TIMEOUT = 0.03


def page(success: int = 0, pending: int = 0) -> str:
    return triton_page(
        {("tensorrt_llm", "1"): ModelStats(success=success, pending=pending)},
        requests={"active": 0, "max": 8, "scheduled": 0, "context": 0, "waiting": 0},
        kv_blocks={"max": 100, "free": 100, "used": 0, "tokens_per": 32, "reused": 0},
    )


def make_table(n: int) -> NodeTable:
    return NodeTable([NodeConfig.local(i, "p") for i in range(n)], lambda pair: 1000.0)


def url(i: int) -> str:
    return f"http://127.0.0.1:{8000 + 10 * i + 2}/metrics"


async def run_for(scraper: MetricsScraper, seconds: float) -> float:
    """Run the scraper for ``seconds``; returns how long run() took to return after stop()."""
    task = asyncio.create_task(scraper.run())
    await asyncio.sleep(seconds)
    t0 = time.perf_counter()
    scraper.stop()
    await asyncio.wait_for(task, timeout=5.0)
    return time.perf_counter() - t0


def test_scrapes_every_node_repeatedly() -> None:
    table = make_table(3)
    counter = itertools.count()
    fetched: list[str] = []

    async def fetch(u: str) -> str:
        fetched.append(u)
        return page(success=next(counter), pending=1)

    scraper = MetricsScraper(table, fetch, interval_s=INTERVAL, timeout_s=TIMEOUT)
    asyncio.run(run_for(scraper, 0.3))
    assert set(fetched) == {url(0), url(1), url(2)}
    for e in table:
        assert scraper.attempts[e.name] >= 4
        assert e.metrics is not None and e.metrics.pending == 1
        assert e.prev_metrics is not None and e.scrape_failures == 0
        d = table.delta(e.name)
        assert d is not None and d.successes > 0 and d.interval_s > 0
    assert not scraper.running


def test_a_hung_node_does_not_delay_the_others() -> None:
    table = make_table(4)

    async def fetch(u: str) -> str:
        if u == url(1):
            await asyncio.sleep(3600)  # hangs (until the per-fetch timeout cancels it)
        return page()

    # The timeout is four intervals: a scraper that waited for every node each round would
    # manage about 0.5 / 0.2 = 2 rounds; independent polling keeps every tick for the others.
    scraper = MetricsScraper(table, fetch, interval_s=INTERVAL, timeout_s=4 * INTERVAL)
    asyncio.run(run_for(scraper, 0.5))
    ticks = 0.5 / INTERVAL
    for i in (0, 2, 3):
        e = table.entry(f"node{i}")
        assert scraper.attempts[e.name] >= ticks - 4, scraper.attempts
        assert e.scrape_failures == 0 and e.metrics is not None
    hung = table.entry("node1")
    assert hung.metrics is None
    assert scraper.attempts["node1"] <= 3
    assert hung.scrape_failures >= 1 and hung.scrape_failures == hung.scrape_failures_total
    assert hung.last_scrape_error == "timeout after 0.2 s"
    assert table.snapshot_of("node1", time.monotonic()).metrics_age_s == float("inf")


def test_a_slow_fetch_skips_missed_ticks() -> None:
    table = make_table(1)

    async def fetch(u: str) -> str:
        await asyncio.sleep(2.5 * INTERVAL)  # slower than the interval, within the timeout
        return page()

    scraper = MetricsScraper(table, fetch, interval_s=INTERVAL, timeout_s=10 * INTERVAL)
    asyncio.run(run_for(scraper, 0.6))
    # One fetch at a time, at the next free tick: about 0.6 / (3 * INTERVAL) = 4, no backlog.
    assert 2 <= scraper.attempts["node0"] <= 5
    assert table.entry("node0").scrape_failures == 0


def test_errors_are_counted_and_cleared() -> None:
    table = make_table(3)
    broken = {"node1": True}

    async def fetch(u: str) -> str:
        if u == url(1) and broken["node1"]:
            raise ConnectionRefusedError(111, "Connection refused")
        if u == url(2):
            return "<html>502 Bad Gateway</html>"
        return page()

    scraper = MetricsScraper(table, fetch, interval_s=INTERVAL, timeout_s=TIMEOUT)

    async def scenario() -> None:
        task = asyncio.create_task(scraper.run())
        await asyncio.sleep(0.3)
        e1 = table.entry("node1")
        assert e1.scrape_failures >= 3 and e1.metrics is None
        assert e1.last_scrape_error == "ConnectionRefusedError: [Errno 111] Connection refused"
        assert e1.last_scrape_error_at is not None
        e2 = table.entry("node2")
        assert e2.scrape_failures >= 3 and e2.metrics is None
        assert e2.last_scrape_error is not None
        assert e2.last_scrape_error.startswith("bad metrics page: ")
        broken["node1"] = False  # node1 recovers
        await asyncio.sleep(0.15)
        assert e1.scrape_failures == 0 and e1.metrics is not None
        assert e1.scrape_failures_total >= 3  # history of trouble is kept
        scraper.stop()
        await task

    asyncio.run(scenario())
    assert table.entry("node0").scrape_failures_total == 0


def test_stop_is_prompt_even_with_fetches_in_flight() -> None:
    table = make_table(8)

    async def fetch(u: str) -> str:
        await asyncio.sleep(3600)
        return ""

    scraper = MetricsScraper(table, fetch, interval_s=1.0, timeout_s=0.9)
    took = asyncio.run(run_for(scraper, 0.2))
    assert took < 0.1  # in-flight fetches are cancelled, not waited for


def test_stop_is_bounded_when_a_fetch_ignores_cancellation() -> None:
    table = make_table(2)
    release = asyncio.Event()

    async def stubborn(u: str) -> str:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if release.is_set():  # lets asyncio.run clean up after the test
                    raise
                # otherwise a badly behaved fetch: swallows its cancellation

    scraper = MetricsScraper(table, stubborn, interval_s=0.2, timeout_s=0.1)

    async def scenario() -> float:
        took = await run_for(scraper, 0.05)
        release.set()
        return took

    took = asyncio.run(scenario())
    assert took < 0.2 + 0.15  # at most one interval after stop()
    assert not scraper.running


def test_stop_before_run_and_double_run() -> None:
    table = make_table(1)
    calls: list[str] = []

    async def fetch(u: str) -> str:
        calls.append(u)
        return page()

    early = MetricsScraper(table, fetch, interval_s=INTERVAL, timeout_s=TIMEOUT)
    early.stop()
    asyncio.run(asyncio.wait_for(early.run(), timeout=1.0))
    assert calls == []

    scraper = MetricsScraper(table, fetch, interval_s=INTERVAL, timeout_s=TIMEOUT)

    async def twice() -> None:
        task = asyncio.create_task(scraper.run())
        await asyncio.sleep(0.01)
        assert scraper.running
        with pytest.raises(RuntimeError, match="already running"):
            await scraper.run()
        scraper.stop()
        await task

    asyncio.run(twice())


def test_metrics_are_stamped_with_the_injected_clock() -> None:
    table = make_table(1)
    ticks = itertools.count(1000)

    async def fetch(u: str) -> str:
        return page()

    scraper = MetricsScraper(
        table, fetch, interval_s=INTERVAL, timeout_s=TIMEOUT, clock=lambda: float(next(ticks))
    )
    assert asyncio.run(scraper.scrape("node0"))
    assert asyncio.run(scraper.scrape("node0"))
    e = table.entry("node0")
    assert e.metrics is not None and e.prev_metrics is not None
    assert (e.prev_metrics.scraped_at, e.metrics.scraped_at) == (1000.0, 1001.0)
    assert scraper.attempts["node0"] == 2


def test_scrape_reads_the_nodes_engine_model() -> None:
    table = NodeTable([NodeConfig.local(0, "p", engine_model="llama_engine")], lambda pair: 1000.0)
    text = triton_page(
        {("llama_engine", "1"): ModelStats(success=3, pending=4)},
        requests={"waiting": 2},
        engine="llama_engine",
    )

    async def fetch(u: str) -> str:
        return text

    assert asyncio.run(MetricsScraper(table, fetch).scrape("node0"))
    m = table.entry("node0").metrics
    assert m is not None and (m.model, m.success, m.queued) == ("llama_engine", 3.0, 6)


def test_on_update_sees_every_accepted_scrape() -> None:
    table = make_table(1)
    seen: list[tuple[str, float]] = []
    ticks = iter([5.0, 6.0, 6.0])

    async def fetch(u: str) -> str:
        return page()

    scraper = MetricsScraper(
        table,
        fetch,
        clock=lambda: next(ticks),
        on_update=lambda node, m: seen.append((node, m.scraped_at)),
    )
    for _ in range(3):
        assert asyncio.run(scraper.scrape("node0"))
    assert seen == [("node0", 5.0), ("node0", 6.0)]  # the stale third scrape was not accepted


def test_a_failing_on_update_is_logged_and_scraping_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = make_table(1)
    calls = 0

    async def fetch(u: str) -> str:
        return page()

    def broken(node: str, metrics: object) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    scraper = MetricsScraper(table, fetch, interval_s=INTERVAL, timeout_s=TIMEOUT, on_update=broken)
    with caplog.at_level(logging.ERROR, logger="mufleet.router"):
        asyncio.run(run_for(scraper, 5 * INTERVAL))
    assert calls >= 2
    assert table.entry("node0").scrape_failures == 0
    assert "handling the metrics of node node0 failed" in caplog.text


def test_scrape_without_a_fetch_outside_run() -> None:
    scraper = MetricsScraper(make_table(1))
    with pytest.raises(RuntimeError, match="no fetch"):
        asyncio.run(scraper.scrape("node0"))


@pytest.mark.parametrize(("interval", "timeout"), [(0.0, 0.1), (-1.0, 0.1), (1.0, 0.0)])
def test_bad_settings(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError):
        MetricsScraper(make_table(1), interval_s=interval, timeout_s=timeout)


# -- the default httpx fetch (with a mock transport: no sockets) ---------------------------


def mock_fetch(handler: Callable[[httpx.Request], httpx.Response]) -> HttpxFetch:
    return HttpxFetch(client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def test_httpx_fetch_returns_the_page() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, text=page(success=5))

    fetch = mock_fetch(handler)
    table = make_table(1)
    assert asyncio.run(MetricsScraper(table, fetch).scrape("node0"))
    assert seen == [url(0)]
    m = table.entry("node0").metrics
    assert m is not None and m.success == 5.0


def test_httpx_fetch_http_errors_are_recorded() -> None:
    fetch = mock_fetch(lambda request: httpx.Response(503, text="unavailable"))
    table = make_table(1)
    assert not asyncio.run(MetricsScraper(table, fetch).scrape("node0"))
    error = table.entry("node0").last_scrape_error
    assert error is not None and error.startswith("HTTPStatusError: Server error '503")


def test_run_closes_the_fetch_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []
    real_aclose: Callable[[HttpxFetch], Awaitable[None]] = HttpxFetch.aclose

    async def aclose(self: HttpxFetch) -> None:
        closed.append(True)
        await real_aclose(self)

    monkeypatch.setattr(HttpxFetch, "aclose", aclose)
    table = NodeTable(
        [
            NodeConfig(
                name="n",
                grpc_url="127.0.0.1:1",
                http_url="http://127.0.0.1:1",
                metrics_url="http://127.0.0.1:1/metrics",  # nothing listens: connect refused
                pair="p",
            )
        ],
        lambda pair: 1000.0,
    )
    scraper = MetricsScraper(table, interval_s=INTERVAL, timeout_s=0.5)

    async def scenario() -> None:
        task = asyncio.create_task(scraper.run())
        for _ in range(500):  # the first connect builds the client's SSL context: can be slow
            if table.entry("n").scrape_failures:
                break
            await asyncio.sleep(0.01)
        scraper.stop()
        await task

    asyncio.run(scenario())
    assert closed == [True]
    e = table.entry("n")
    assert e.scrape_failures >= 1 and e.last_scrape_error is not None
    assert e.last_scrape_error.startswith("ConnectError")
