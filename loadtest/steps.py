"""Capacity steps: what one step of offered load measured, and whether it held.

A step offers `users x user_rps` requests a second for `step_s` seconds. It is judged on a
window that leaves out its first seconds (users starting, connections opening) and, for the
request rate, the last `lag_s` seconds, whose counts have not all reached the runner yet (the
workers of `--processes` report every 3 s; locust counts a request in the second it ended).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from locust.stats import calculate_response_time_percentile

# Below this share of the offered rate the collector (or locust) did not keep up.
MIN_ACHIEVED_SHARE = 0.9
# A locust process above this CPU share measures itself, not the collector.
LOCUST_CPU_BUSY_PCT = 90.0


@dataclass(frozen=True)
class Bounds:
    max_fail_ratio: float
    max_p95_ms: float
    max_p99_ms: float


@dataclass(frozen=True)
class Snapshot:
    """What the runner's total statistics held at one moment."""

    requests: int
    failures: int
    response_times: dict[int, int]

    @classmethod
    def of(cls, entry: Any) -> Snapshot:
        return cls(entry.num_requests, entry.num_failures, dict(entry.response_times))


@dataclass
class StepResult:
    step: int
    users: int
    offered_rps: float
    achieved_rps: float
    requests: int
    failures: int
    p50_ms: int
    p95_ms: int
    p99_ms: int
    locust_cpu_pct: float
    held: bool = True
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        verdict = "held" if self.held else "FAILED: " + "; ".join(self.reasons)
        return (
            f"step {self.step:>2}: {self.users:>5} users, offered {self.offered_rps:>7.0f} req/s,"
            f" achieved {self.achieved_rps:>7.0f}, failures {self.failures}/{self.requests},"
            f" p50 {self.p50_ms} ms, p95 {self.p95_ms} ms, p99 {self.p99_ms} ms,"
            f" locust CPU {self.locust_cpu_pct:.0f} %: {verdict}"
        )


def per_second_sum(per_second: dict[int, int], first_s: float, end_s: float) -> int:
    """Requests counted in the whole seconds from `first_s` up to (not including) `end_s`."""
    return sum(per_second.get(second, 0) for second in range(int(first_s) + 1, int(end_s)))


def window_seconds(first_s: float, end_s: float) -> int:
    return max(0, int(end_s) - int(first_s) - 1)


def judge(
    step: int,
    users: int,
    offered_rps: float,
    rate: tuple[int, int],
    before: Snapshot,
    after: Snapshot,
    locust_cpu_pct: float,
    bounds: Bounds,
) -> StepResult:
    """One step's figures and verdict. `rate` is (requests, seconds) of the rate window;
    `before` and `after` bracket the window of failures and latency."""
    rate_requests, seconds = rate
    times = {
        ms: count - before.response_times.get(ms, 0)
        for ms, count in after.response_times.items()
        if count > before.response_times.get(ms, 0)
    }
    requests = after.requests - before.requests
    failures = after.failures - before.failures
    result = StepResult(
        step=step,
        users=users,
        offered_rps=offered_rps,
        achieved_rps=rate_requests / seconds if seconds else 0.0,
        requests=requests,
        failures=failures,
        p50_ms=calculate_response_time_percentile(times, requests, 0.50),
        p95_ms=calculate_response_time_percentile(times, requests, 0.95),
        p99_ms=calculate_response_time_percentile(times, requests, 0.99),
        locust_cpu_pct=locust_cpu_pct,
    )
    fail_ratio = failures / requests if requests else 0.0
    if requests == 0:
        result.reasons.append("no request completed")
    if fail_ratio > bounds.max_fail_ratio:
        result.reasons.append(f"failure ratio {fail_ratio:.2%} > {bounds.max_fail_ratio:.2%}")
    if result.p95_ms > bounds.max_p95_ms:
        result.reasons.append(f"p95 {result.p95_ms} ms > {bounds.max_p95_ms:g} ms")
    if result.p99_ms > bounds.max_p99_ms:
        result.reasons.append(f"p99 {result.p99_ms} ms > {bounds.max_p99_ms:g} ms")
    if result.achieved_rps < MIN_ACHIEVED_SHARE * offered_rps:
        why = f"achieved {result.achieved_rps:.0f} < {MIN_ACHIEVED_SHARE:.0%} of offered"
        if locust_cpu_pct >= LOCUST_CPU_BUSY_PCT:
            why += " (locust itself is CPU-bound: more --processes, or another machine)"
        result.reasons.append(why)
    result.held = not result.reasons
    return result
