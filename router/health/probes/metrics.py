"""Judgements on each node's scraped ``/metrics`` (the scraper fills the table).

* scrapes failing in a row (a frozen or overloaded process);
* **no progress**: work waiting in the node (Triton pending or the engine's
  ``nv_trt_llm_request_metrics{request_type="waiting"}``) and no request of the engine
  model finishing, for ``no_progress_s`` across consecutive scrapes — a wedged engine
  must never look idle;
* the engine model's failure share over a scrape interval.

Each is *suspect*: these are reasons to look closer (the canary confirms), not proof.
"""

from __future__ import annotations

from router.fleet import NodeTable
from router.health.config import MetricsProbeConfig
from router.health.signals import Signal, Verdict


class MetricsJudge:
    name = "metrics"

    def __init__(self, config: MetricsProbeConfig, nodes: list[str]) -> None:
        self.config = config
        self._seen: dict[str, float] = {}
        """Per node, the ``scraped_at`` of the last sample judged."""
        self._stuck_since: dict[str, float] = {}
        self._last: dict[str, Verdict] = dict.fromkeys(nodes, Verdict.PASS)

    def forget(self, node: str) -> None:
        self._stuck_since.pop(node, None)
        self._last[node] = Verdict.PASS

    def evaluate(self, table: NodeTable, now: float) -> list[Signal]:
        signals: list[Signal] = []
        for entry in table:
            name = entry.name
            verdict, reason = self._judge(table, name, now)
            if verdict is None:
                continue
            if verdict is not Verdict.PASS or self._last.get(name) is not Verdict.PASS:
                signals.append(Signal(name, self.name, verdict, reason, now))
            self._last[name] = verdict
        return signals

    def _judge(self, table: NodeTable, name: str, now: float) -> tuple[Verdict | None, str]:
        c = self.config
        entry = table.entry(name)
        if entry.scrape_failures >= c.scrape_failures_suspect:
            return Verdict.SUSPECT, (
                f"{entry.scrape_failures} scrapes failed in a row: {entry.last_scrape_error}"
            )
        m = entry.metrics
        if m is None or self._seen.get(name) == m.scraped_at:
            return None, ""  # nothing new to judge
        self._seen[name] = m.scraped_at
        d = table.delta(name)
        if d is None or d.reset:
            self._stuck_since.pop(name, None)
            return Verdict.PASS, "fresh metrics"
        if d.no_progress:
            since = self._stuck_since.setdefault(name, m.scraped_at - d.interval_s)
            stuck = m.scraped_at - since
            if stuck >= c.no_progress_s:
                return Verdict.SUSPECT, (
                    f"{d.queued} requests waiting and none finished for {stuck:.1f} s"
                )
        else:
            self._stuck_since.pop(name, None)
        total = d.failures + d.successes
        if d.failures >= 2 and total > 0 and d.failures / total >= c.failure_rate_suspect:
            return Verdict.SUSPECT, f"{d.failures:g} of {total:g} requests failed"
        return Verdict.PASS, "metrics look normal"
