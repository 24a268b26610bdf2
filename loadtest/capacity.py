"""Capacity run: the realistic users without think time, paced, stepped up until it breaks.

    make loadtest MODE=capacity
    .venv/bin/python -m locust -f loadtest/capacity.py --headless --host http://127.0.0.1:8080

Each user sends `--user-rps` requests a second (not as fast as it can: a known offered rate,
so "the collector answered slower" and "locust could not send more" are told apart). Every
`--step-s` seconds the offered rate grows by `--step-rps`, from `--start-rps` up to
`--max-rps`. The run stops after the first step whose failure ratio, p95 or p99 crosses its
bound or whose achieved rate falls below 90 % of the offered one, or after `--time-limit-s`;
the last step that held is the answer. Each step's figures go to stdout and `--steps-json`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import orjson
from locust import LoadTestShape, events
from locust.runners import MasterRunner

from loadtest import locustfile as mix
from loadtest.steps import Bounds, Snapshot, StepResult, judge, per_second_sum, window_seconds
from loadtest.traffic import Paced

WARMUP_S = 4.0  # new users starting and connecting: left out of each step's figures
# Locust warns that faster spawning "sometimes causes issues"; a big step takes longer to
# start, and its warm-up grows to match.
MAX_SPAWN_RATE = 100.0
LOCAL_LAG_S = 1.0  # the current second is not complete yet
WORKER_LAG_S = 3.5  # workers report every 3 s


@events.init_command_line_parser.add_listener
def _capacity_options(parser: Any) -> None:
    group = parser.add_argument_group("Beacon capacity steps")
    group.add_argument("--start-rps", type=float, default=200, help="first step's offered rate")
    group.add_argument("--step-rps", type=float, default=200, help="added at each step")
    group.add_argument("--max-rps", type=float, default=20_000, help="last step at most")
    group.add_argument("--step-s", type=float, default=15, help="seconds per step")
    group.add_argument("--user-rps", type=float, default=5, help="requests a second per user")
    group.add_argument("--max-fail-ratio", type=float, default=0.01)
    group.add_argument("--max-p95-ms", type=float, default=50)
    group.add_argument("--max-p99-ms", type=float, default=200)
    group.add_argument("--time-limit-s", type=float, default=600, help="whole run at most")
    group.add_argument("--steps-json", default="", help="write every step's figures here")


@events.init.add_listener
def _pace_users(environment: Any, **_: Any) -> None:
    Paced.user_rps = environment.parsed_options.user_rps


class EmailReader(Paced, mix.EmailReader):
    pass


class WebVisitor(Paced, mix.WebVisitor):
    pass


class AdSlot(Paced, mix.AdSlot):
    pass


class StepShape(LoadTestShape):
    """Offered rate in steps; stops at the first step that did not hold."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[StepResult] = []
        self.users = 0
        self.step_started_s = 0.0
        self.warmup_s = WARMUP_S
        self.before: Snapshot | None = None

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        opts: Any = self.runner.environment.parsed_options
        now_s = time.time()
        if not self.step_started_s:
            return self._start_step(opts.start_rps, now_s)
        elapsed_s = now_s - self.step_started_s
        lag_s = WORKER_LAG_S if isinstance(self.runner, MasterRunner) else LOCAL_LAG_S
        total = self.runner.stats.total
        if self.before is None and elapsed_s >= self.warmup_s + lag_s:
            self.before = Snapshot.of(total)
        if elapsed_s < max(opts.step_s, self.warmup_s + lag_s + 3) or self.before is None:
            return self.users, self._spawn_rate()
        result = self._judge(opts, lag_s, now_s)
        next_rps = (self.users * opts.user_rps) + opts.step_rps
        out_of_time = self.get_run_time() + opts.step_s > opts.time_limit_s
        if not result.held or next_rps > opts.max_rps or out_of_time:
            return None
        return self._start_step(next_rps, now_s)

    def _start_step(self, rps: float, now_s: float) -> tuple[int, float]:
        opts: Any = self.runner.environment.parsed_options  # type: ignore[union-attr]
        added = max(1, math.ceil(rps / opts.user_rps)) - self.users
        self.users += added
        self.warmup_s = max(WARMUP_S, added / MAX_SPAWN_RATE + 2)
        self.step_started_s, self.before = now_s, None
        return self.users, self._spawn_rate()

    def _spawn_rate(self) -> float:
        return min(MAX_SPAWN_RATE, float(self.users))  # a step's users in a second or so

    def _judge(self, opts: Any, lag_s: float, now_s: float) -> StepResult:
        assert self.runner is not None and self.before is not None
        total = self.runner.stats.total
        first_s, end_s = self.step_started_s + self.warmup_s, now_s - lag_s
        rate = (per_second_sum(total.num_reqs_per_sec, first_s, end_s),
                window_seconds(first_s, end_s))  # fmt: skip
        result = judge(
            step=len(self.results) + 1,
            users=self.users,
            offered_rps=self.users * opts.user_rps,
            rate=rate,
            before=self.before,
            after=Snapshot.of(total),
            locust_cpu_pct=self._locust_cpu_pct(),
            bounds=Bounds(opts.max_fail_ratio, opts.max_p95_ms, opts.max_p99_ms),
        )
        self.results.append(result)
        print(result.line(), flush=True)
        if opts.steps_json:
            steps = [r.to_json() for r in self.results]
            Path(opts.steps_json).write_bytes(orjson.dumps(steps, option=orjson.OPT_INDENT_2))
        return result

    def _locust_cpu_pct(self) -> float:
        runner = self.runner
        if isinstance(runner, MasterRunner):
            return max((float(w.cpu_usage) for w in runner.clients.values()), default=0.0)
        return float(getattr(runner, "current_cpu_usage", 0.0))
