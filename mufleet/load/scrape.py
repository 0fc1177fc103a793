"""The router's ``/metrics`` during a load run, scraped once a second into samples.

Only the families the report reads are kept: per node the MU utilisation, in-flight MU,
health state, trust and capacity factor; per tenant the admitted, settled and rejected
work; failovers, migrations and evictions. Samples are written as ``router_metrics.csv``
(``t_s, metric, labels, value``; labels as ``k=v;k=v``) next to Locust's CSVs.
"""

from __future__ import annotations

import csv
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

WATCHED = frozenset(
    {
        "mufleet_router_utilisation_ratio",
        "mufleet_router_inflight_mu",
        "mufleet_router_node_state",
        "mufleet_router_node_trust",
        "mufleet_router_node_capacity_factor",
        "mufleet_router_admitted_mu",
        "mufleet_router_admitted_requests",
        "mufleet_router_settled_mu",
        "mufleet_router_rejected_requests",
        "mufleet_router_failovers",
        "mufleet_router_migrations",
        "mufleet_router_evicted_requests",
        "mufleet_router_queued_requests",
        "mufleet_router_affinity_hits",
    }
)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    t_s: float
    """Wall-clock time of the scrape (epoch seconds)."""
    metric: str
    """The sample's name as exposed (counters end in ``_total``)."""
    labels: Labels
    value: float

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


def parse_exposition(text: str, t_s: float, watched: frozenset[str] = WATCHED) -> list[Sample]:
    """The samples of the watched families in a Prometheus text exposition."""
    samples = []
    for family in text_string_to_metric_families(text):
        if family.name.removesuffix("_total") not in watched:
            continue
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            samples.append(Sample(t_s, s.name, tuple(sorted(s.labels.items())), float(s.value)))
    return samples


class RouterScraper(threading.Thread):
    """Polls ``url`` every ``interval_s`` until :meth:`stop`; failures are counted, not
    raised (a router that restarts mid-run leaves a gap, not a crash)."""

    def __init__(self, url: str, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        super().__init__(name="router-scrape", daemon=True)
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.samples: list[Sample] = []
        self.failures = 0
        self._stop_event = threading.Event()

    def scrape_once(self) -> None:
        now = time.time()
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                text = response.read().decode("utf-8", "replace")
        except OSError:
            self.failures += 1
            return
        self.samples.extend(parse_exposition(text, now))

    def run(self) -> None:
        while not self._stop_event.is_set():
            started = time.monotonic()
            self.scrape_once()
            self._stop_event.wait(max(self.interval_s - (time.monotonic() - started), 0.0))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.timeout_s + self.interval_s + 1)


def _labels_text(labels: Labels) -> str:
    return ";".join(f"{k}={v}" for k, v in labels)


def _labels_parse(text: str) -> Labels:
    if not text:
        return ()
    pairs = []
    for item in text.split(";"):
        key, _, value = item.partition("=")
        pairs.append((key, value))
    return tuple(pairs)


def write_samples(path: Path, samples: Iterable[Sample]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "metric", "labels", "value"])
        for s in samples:
            writer.writerow([f"{s.t_s:.3f}", s.metric, _labels_text(s.labels), repr(s.value)])


def read_samples(path: Path) -> list[Sample]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [
            Sample(float(r["t_s"]), r["metric"], _labels_parse(r["labels"]), float(r["value"]))
            for r in csv.DictReader(f)
        ]
