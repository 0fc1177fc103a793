"""Detection and recovery times of each fault on a real supervised fleet, repeated.

    .venv/bin/python bench/health_detection.py [--repeats 3] [--faults hang,sigstop,...]

Four sim-engine ``tritonserver`` nodes under a supervisor with its control API, one
simulated GPU agent, the router with the default health configuration in front, and steady
streaming load (3 clients). Each fault is injected on one node and timed from the router's
own transition history: **detection** = fault → the node first taken out (cordoned or
further), **recovery** = fault → healthy again (for the GPU XID: from clearing the fault,
since no restart fixes a GPU off the bus). Requests the load lost are counted.

Next to it, what the same faults would take with Kubernetes probes (period 10 s ×
failureThreshold 3, readiness on ``/v2/health/ready``) and Dynamo's canary (fires after 10 s
idle, 3 s timeout — it does not fire on a busy worker): a model hung in ``execute``
and a garbage-answering node keep ``/v2/health/ready`` at 200, so probes never see them.

Writes ``bench/results/health_detection.json`` and ``.png`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from healing import OUT_STATES, Fleet, SteadyLoad, failures, supervised_fleet

from mufleet.gpu.simulated import GpuFault, edit_state
from mufleet.tiny_model import default_model_dir

RESULTS = Path(__file__).parent / "results"
FAULTS = ("hang", "sigstop", "sigkill", "errors", "garbage", "xid79")
KUBERNETES = {  # seconds; None: never detected (readiness stays 200)
    "hang": None,
    "sigstop": 30.0,  # 3 probes × 10 s, each timing out
    "sigkill": 30.0,
    "errors": None,
    "garbage": None,
    "xid79": None,
}
DYNAMO_IDLE = 13.0  # 10 s idle before the canary fires, 3 s timeout; never under load


def inject(fleet: Fleet, fault: str, node: str) -> None:
    process = fleet.node(node).process
    if fault == "hang":
        fleet.fault(node, hang=True, until_restart=True)
    elif fault == "errors":
        fleet.fault(node, error_rate=1.0, until_restart=True)
    elif fault == "garbage":
        fleet.fault(node, garbage=True, until_restart=True)
    elif fault == "sigstop":
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
    elif fault == "sigkill":
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
    elif fault == "xid79":
        edit_state(fleet.gpu_files[node], GpuFault(xid=79))


def first_out(fleet: Fleet, node: str, since: float) -> float:
    for t in fleet.history(node):
        if t["at"] >= since and t["to"] in OUT_STATES:
            return float(t["at"] - since)
    raise AssertionError(fleet.history(node))


def run_one(fleet: Fleet, fault: str, node: str) -> dict[str, Any]:
    fleet.wait_all_healthy()
    load = SteadyLoad(fleet.router).start()
    time.sleep(2.0)
    since = time.monotonic()
    inject(fleet, fault, node)
    fleet.wait_state(node, OUT_STATES, 60)
    detection = first_out(fleet, node, since)
    recovered_from = since
    if fault == "xid79":
        time.sleep(2.0)
        recovered_from = time.monotonic()
        edit_state(fleet.gpu_files[node], GpuFault(clear=True))
    recovery = fleet.wait_state(node, ("healthy",), 300, since=recovered_from)
    lost = failures(load.stop())
    fleet.clear_faults()
    return {
        "fault": fault,
        "node": node,
        "detection_s": detection,
        "recovery_s": recovery,
        "requests": len(load.results),
        "lost": len(lost),
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for fault in dict.fromkeys(r["fault"] for r in runs):
        mine = [r for r in runs if r["fault"] == fault]
        det = [r["detection_s"] for r in mine]
        rec = [r["recovery_s"] for r in mine]
        rows.append(
            {
                "fault": fault,
                "runs": len(mine),
                "detection_median_s": statistics.median(det),
                "detection_max_s": max(det),
                "recovery_median_s": statistics.median(rec),
                "recovery_max_s": max(rec),
                "lost": sum(r["lost"] for r in mine),
                "requests": sum(r["requests"] for r in mine),
                "kubernetes_s": KUBERNETES[fault],
                "dynamo_canary_s": DYNAMO_IDLE if fault in ("hang", "sigstop") else None,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def fmt(v: float | None, never: str = "never") -> str:
        return never if v is None else f"{v:.2f}"

    lines = [
        "| fault | runs | detection median / max (s) | recovery median / max (s) | lost / "
        "requests | Kubernetes probes (s) | Dynamo canary, idle node (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['fault']} | {r['runs']} | {r['detection_median_s']:.2f} / "
            f"{r['detection_max_s']:.2f} | {r['recovery_median_s']:.1f} / "
            f"{r['recovery_max_s']:.1f} | {r['lost']} / {r['requests']} | "
            f"{fmt(r['kubernetes_s'])} | {fmt(r['dynamo_canary_s'], 'n/a')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["fault"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(
        [i - 0.2 for i in x],
        [r["detection_median_s"] for r in rows],
        0.4,
        yerr=[[0] * len(rows), [r["detection_max_s"] - r["detection_median_s"] for r in rows]],
        label="mufleet (median, max)",
    )
    k8s = [r["kubernetes_s"] if r["kubernetes_s"] is not None else 0 for r in rows]
    ax.bar([i + 0.2 for i in x], k8s, 0.4, label="Kubernetes probes (0: never)", color="grey")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("seconds to detect")
    ax.set_title("Fault detection on a 4-node sim fleet under load")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--faults", default=",".join(FAULTS))
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "logs").mkdir()
        with supervised_fleet(default_model_dir(), home, "bench", nodes=4, gpu_agents=1) as fleet:
            for fault in faults:
                for i in range(args.repeats):
                    node = "bench0" if fault == "xid79" else f"bench{i % 4}"
                    run = run_one(fleet, fault, node)
                    runs.append(run)
                    print(
                        f"[{len(runs)}/{len(faults) * args.repeats}] {fault} on {node}: "
                        f"detected {run['detection_s']:.2f} s, healthy again "
                        f"{run['recovery_s']:.1f} s, lost {run['lost']}",
                        flush=True,
                    )
    rows = summarise(runs)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "health_detection.json").write_text(
        json.dumps({"runs": runs, "rows": rows}, indent=2)
    )
    plot(rows, RESULTS / "health_detection.png")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
