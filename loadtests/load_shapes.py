"""The Locust ``LoadTestShape`` over :mod:`mufleet.load.shapes`' schedules.

One shape class serves every run (Locust takes the first shape it finds): ``--llm-shape``
picks the schedule, and Locust's own ``--users``, ``--spawn-rate`` and ``--run-time`` size
it (``use_common_options``), so ``locust -f loadtests/locustfile.py -u 20 -r 5 -t 60s``
behaves as a plain run would.
"""

from __future__ import annotations

from typing import Any

from llm_options import duration_s
from locust import LoadTestShape

from mufleet.load.shapes import AnySchedule, build_schedule

DEFAULT_RUN_TIME_S = 60.0


def schedule_from(options: Any) -> AnySchedule:
    """The schedule the parsed Locust ``options`` describe."""
    return build_schedule(
        options.llm_shape,
        int(options.num_users or 1),
        float(options.spawn_rate or 1.0),
        duration_s(options, DEFAULT_RUN_TIME_S),
        steps=options.llm_steps,
        drain_s=options.llm_drain,
    )


class LlmShape(LoadTestShape):
    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self._schedule: AnySchedule | None = None

    def tick(self) -> tuple[int, float] | None:
        if self._schedule is None:
            assert self.runner is not None
            self._schedule = schedule_from(self.runner.environment.parsed_options)
        return self._schedule.at(self.get_run_time())
