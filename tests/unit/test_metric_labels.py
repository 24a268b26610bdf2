"""Every labelled counter is exported at 0 for each label value the code can emit, from the moment
the metrics are registered (collector/metrics.py, consumers/metrics.py, the store port's counters
in analytics/query_server.py, the dashboard's in analytics/dashboard/app.py).

A child made at its first increment appears at 1 (or at a whole burst): rate() and increase()
never see that step, and the alerts on rare events (deploy/prometheus/alerts.yml: one
dead-lettered record, a burst of drops) would stay silent. The exposition is read here as
Prometheus reads it; the code is read with `ast` for every label value it can emit, so a reason
added anywhere without being made at 0 fails here.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Callable, Iterator
from functools import cache
from itertools import product
from pathlib import Path
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from analytics.dashboard.app import READS, SIGN_INS
from analytics.dashboard.service import REGISTRY, create_dashboard_app
from analytics.query_server import ERASE_REQUESTS, QUERY_REQUESTS, create_query_app
from collector.app import COLLECTOR, create_app
from collector.metrics import CollectorMetrics, reason_of
from collector.ratelimit import LIMITED
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from consumers import ingest
from consumers.metrics import ConsumerMetrics

ROOT = Path(__file__).resolve().parents[2]
Values = set[str]


def exposition(registry: CollectorRegistry) -> dict[str, dict[tuple[str, ...], float]]:
    """Counter family -> {label values: value}, parsed from the /metrics text."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.type == "counter":
            out[family.name] = {
                tuple(s.labels.values()): s.value
                for s in family.samples
                if s.name.endswith("_total")
            }
    return out


def store_app_registry() -> tuple[CollectorRegistry, dict[str, Counter]]:
    """The store port's registry, and its counters by the app key the handlers use."""
    registry = CollectorRegistry()
    app = create_query_app(None, None, registry, audit_path=Path("unused"))  # type: ignore[arg-type]
    return registry, {"QUERY_REQUESTS": app[QUERY_REQUESTS], "ERASE_REQUESTS": app[ERASE_REQUESTS]}


def dashboard_registry() -> tuple[CollectorRegistry, dict[str, Counter]]:
    """The dashboard's registry (`beacon dashboard`), and its counters by app key."""
    app = create_dashboard_app(None, "a-dashboard-token")  # type: ignore[arg-type]
    return app[REGISTRY], {"READS": app[READS], "SIGN_INS": app[SIGN_INS]}


def test_a_fresh_process_exports_every_label_value_at_0() -> None:
    collector = exposition(CollectorMetrics(CollectorRegistry()).registry)
    consumer = exposition(ConsumerMetrics(CollectorRegistry()).registry)
    store = exposition(store_app_registry()[0])
    dashboard = exposition(dashboard_registry()[0])
    for families in (collector, consumer, store, dashboard):
        for name, children in families.items():
            assert children, f"{name}: a counter without a single series"
            assert set(children.values()) == {0.0}, name
    # What the alerts read, by name: a loss of accepted events, a dead letter, the edge's
    # failures, a failed insert.
    dropped = collector["beacon_events_dropped"]
    assert {("buffer_full",), ("spool_full",), ("spool_error",), ("sink_error",)} <= dropped.keys()
    assert {(reason,) for reason in ingest.REJECT_REASONS} == consumer[
        "beacon_consumer_dlq_records"
    ].keys()
    requests = collector["beacon_requests"]
    assert {("events", "503"), ("pixel", "buffer_full"), ("pixel", "error")} <= requests.keys()
    assert ("error",) in consumer["beacon_consumer_inserts"]
    assert ("page", "memory_limit") in dashboard["beacon_dashboard_reads"]


def test_the_hot_path_tallies_fold_into_the_children_made_at_0(settings: Settings) -> None:
    metrics = CollectorMetrics(CollectorRegistry())
    collector = create_app(settings, MemorySink(), metrics)[COLLECTOR]
    made = metrics.requests.labels("pixel", "recorded")
    collector.requests["pixel", "recorded"].inc()
    collector.fixed["url_truncated"].inc()
    assert collector.requests["pixel", "recorded"].child is made
    metrics.fold()
    shown = exposition(metrics.registry)
    assert shown["beacon_requests"][("pixel", "recorded")] == 1
    assert shown["beacon_requests"][("pixel", "head")] == 0
    assert shown["beacon_input_fixed"][("url_truncated",)] == 1
    assert shown["beacon_input_fixed"][("bad_consent",)] == 0


# -- every label value the code emits -----------------------------------------------------------


@cache
def tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(), path)


@cache
def module(path: str) -> Any:
    return importlib.import_module(path.removesuffix(".py").replace("/", "."))


def function(path: str, qualname: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    scope: Any = tree(path)
    for part in qualname.split("."):
        scope = next(
            node
            for node in scope.body
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name == part
        )
    assert isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef)
    return scope


def strings(
    node: ast.expr, path: str, func: ast.AST | None = None, bound: dict[str, Values] | None = None
) -> Values | None:
    """The string values `node` can have, read from the code: constants, either branch of an
    `x if c else y`, a module's constant, a name bound by a loop over constants or assigned
    only constants in the function; None for anything else (it comes from elsewhere)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        body, orelse = (
            strings(node.body, path, func, bound),
            strings(node.orelse, path, func, bound),
        )
        return None if body is None or orelse is None else body | orelse
    if isinstance(node, ast.Tuple | ast.List):
        parts = [strings(elt, path, func, bound) for elt in node.elts]
        return None if any(p is None for p in parts) else set().union(*parts)  # type: ignore[arg-type]
    if not isinstance(node, ast.Name):
        return None
    if bound and node.id in bound:
        return bound[node.id]
    value = getattr(module(path), node.id, None)
    if isinstance(value, str):
        return {value}
    if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
        return set(value)
    return assigned(func, node.id, path) if func is not None else None


def assigned(func: ast.AST, name: str, path: str) -> Values | None:
    """What `name` is assigned in `func`, when that is only ever constants (not a parameter)."""
    assert isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
    if name in {a.arg for a in [*func.args.args, *func.args.kwonlyargs]}:
        return None
    found: Values = set()
    seen = False
    for node in ast.walk(func):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            if isinstance(target, ast.Name) and target.id == name:
                values = strings(node.value, path)  # type: ignore[attr-defined]
                if values is None:
                    return None
                found |= values
                seen = True
            elif any(isinstance(t, ast.Name) and t.id == name for t in ast.walk(target)):
                return None  # unpacked from something else
    return found if seen else None


def constants_assigned(path: str, qualname: str, name: str) -> Values:
    """The constants `name` is assigned in `qualname` (other assignments come from calls,
    whose functions are listed beside)."""
    func = function(path, qualname)
    out: Values = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            out |= strings(node.value, path) or set()
    return out


def returned(path: str, qualname: str, first: bool = False) -> Values:
    """The string values `qualname` returns (the first of a returned tuple, with `first`)."""
    func = function(path, qualname)
    out: Values = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            if first and isinstance(value, ast.Tuple):
                value = value.elts[0]
            out |= strings(value, path, func) or set()  # a call: that function is listed too
    return out


def call_args(path: str, callee: str, index: int) -> Values:
    """The string values of argument `index` of every call of `callee` (its dotted tail). A
    variable there passes on what its own function was given: those calls are listed too."""
    out: Values = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(callee):
            if len(node.args) > index:
                arg = node.args[index]
                values = strings(arg, path)
                assert values is not None or isinstance(arg, ast.Name), ast.unparse(node)
                out |= values or set()
    return out


def collector_files() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in sorted((ROOT / "collector").rglob("*.py"))]


def rejected() -> Values:
    """Every reason the collector refuses an event with: `Rejected(...)` anywhere, and the
    reason sets that module keeps (collector/event.py, json_event.py)."""
    out: Values = set()
    for path in collector_files():
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Rejected"):
                values = strings(node.args[0], path)
                if values is None:  # a lookup in the module's own reason set, or notes[0]
                    text = ast.unparse(node.args[0])
                    assert text in {"TOO_LONG[name]", "NOT_STRING[key]", "notes[0]"}, text
                    values = set(module(path).REJECT_REASONS)
                out |= values
    return out


def notes() -> Values:
    """Every note of input cut to fit: `notes.append(...)` anywhere in the collector."""
    return set().union(*(call_args(path, "notes.append", 0) for path in collector_files()))


def flags() -> Values:
    """An event's flags: the classes collector/networks.py maps iporigin's kinds to, and what
    collector/request_view.py's `purpose` returns."""
    classes = set(module("collector/networks.py").CLASS_OF_KIND.values())
    return classes | (returned("collector/request_view.py", "purpose") - {""})


def prepared_outcomes() -> Values:
    """Why an event Collector.prepare built is not to be stored ("": it is)."""
    return call_args("collector/handlers.py", "Prepared", 0) - {""}


def erase_outcomes() -> Values:
    """What a POST /erase comes to: the first of every Outcome(...) in the store port."""
    return call_args("analytics/query_server.py", "Outcome", 0)


def refusals() -> Values:
    """Why the buffer or the write-ahead log refused an event (their `refused`): the reason of
    each `self._refuse(...)` there."""
    return call_args("collector/buffer.py", "self._refuse", 0) | call_args(
        "collector/spool/wal.py", "self._refuse", 0
    )


def commit_outcomes() -> Values:
    """What Collector.commit gives: buffered, refused (and why), or why a built event is not
    stored."""
    return returned("collector/handlers.py", "Collector.commit") | refusals() | prepared_outcomes()


def pixel_outcomes() -> Values:
    handlers = "collector/handlers.py"
    return (
        returned(handlers, "Collector.pixel_outcome")
        | returned(handlers, "Collector._pixel_event")
        | constants_assigned(handlers, "Collector._pixel_event", "outcome")
        | commit_outcomes()
        | call_args("collector/ratelimit.py", "pixel_done", 0)
        | constants_assigned("collector/fastpath.py", "PixelFastPath.data_received", "outcome")
    )


def events_outcomes() -> Values:
    """POST /e: "recorded" or the status of the error answer (json_error's first argument)."""
    handlers = "collector/handlers.py"
    statuses = {
        str(node.args[0].value)
        for name in ("Collector._events", "Collector._commit_batch")
        for node in ast.walk(function(handlers, name))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "json_error"
        if isinstance(node.args[0], ast.Constant)
    }
    return {"recorded"} | statuses | call_args("collector/ratelimit.py", "events_done", 0)


def verify_outcomes() -> Values:
    return returned("collector/signing.py", "verify")


def click_refusals() -> Values:
    redirect = "collector/redirect.py"
    return (
        returned(redirect, "ClickRedirect._refusal")
        | (verify_outcomes() - {module("collector/signing.py").VALID})
        | (returned("collector/destinations.py", "check_destination") - {""})
    )


def click_outcomes() -> Values:
    redirect = "collector/redirect.py"
    return (
        returned(redirect, "ClickRedirect._click", first=True)
        | returned(redirect, "ClickRedirect._record", first=True)
        | commit_outcomes()
    )


def ingest_reasons() -> Values:
    """The reasons the ingest's SQL names (consumers/ingest.py REASON)."""
    return set(re.findall(r", '(\w+)',?\n", ingest.REASON)) | {ingest.OTHER_REFUSAL}


def query_outcomes() -> Values:
    path = "analytics/query_server.py"
    return (
        returned(path, "_query", first=True)
        | returned("analytics/store/readers.py", "read_failure", first=True)
        | constants_assigned(path, "query", "outcome")  # its client gone, a fault of the port
    )


def dashboard_read_outcomes() -> Values:
    """A dashboard read's outcome: what its handlers return, a key of REFUSAL_TEXT when the
    store refused it (store_refusal), or what `counted` makes of an exception."""
    path = "analytics/dashboard/app.py"
    handlers = ("page", "data_json", "realtime_json", "store_refusal_json", "store_refusal")
    return (
        set().union(*(returned(path, name, first=True) for name in handlers))
        | set(module(path).REFUSAL_TEXT)
        | constants_assigned(path, "counted.handle", "outcome")
    )


# The label values that come from elsewhere than the line that counts them: (file, function,
# counter, the argument as written) -> what the code can pass there. A new such argument fails
# the test until it is listed here with where its values come from.
FLOWS: dict[tuple[str, str, str, str], Callable[[], Values]] = {
    ("collector/handlers.py", "commit", "events_dropped", "prepared.outcome"): prepared_outcomes,
    ("collector/handlers.py", "_commit_batch", "events_dropped", "event.outcome"): (
        prepared_outcomes
    ),
    ("collector/handlers.py", "_count_recorded", "events_accepted", "prepared.transport"): lambda: (
        call_args("collector/handlers.py", "self.prepare", 4)
        | call_args("collector/redirect.py", "collector.prepare", 4)
    ),
    ("collector/handlers.py", "_count_recorded", "input_fixed", "note"): notes,
    ("collector/handlers.py", "_count_recorded", "events_flagged", "flag"): flags,
    ("collector/handlers.py", "_pixel_event", "events_dropped", "exc.reason"): rejected,
    ("collector/handlers.py", "_events", "events_dropped", "exc.reason"): rejected,
    ("collector/handlers.py", "pixel_done", "requests", "outcome"): pixel_outcomes,
    ("collector/handlers.py", "events_done", "requests", "outcome"): events_outcomes,
    ("collector/handlers.py", "over_limit", "rate_limited", "endpoint"): lambda: (
        set(LIMITED.values()) | call_args("collector/fastpath.py", "over_limit", 0)
    ),
    ("collector/redirect.py", "click", "requests", "outcome"): click_outcomes,
    ("collector/snippet.py", "serve", "requests", "script.endpoint"): lambda: {
        script.endpoint for script in module("collector/snippet.py").SCRIPTS
    },
    ("collector/redirect.py", "_click", "click_refused", "reason"): click_refusals,
    ("collector/redirect.py", "_refusal", "signature_checks", "signature"): verify_outcomes,
    ("collector/redirect.py", "_record", "events_dropped", "exc.reason"): rejected,
    ("collector/signing.py", "check", "signature_checks", "endpoint"): lambda: call_args(
        "collector/handlers.py", "gate.check", 2
    ),
    ("collector/signing.py", "check", "signature_checks", "outcome"): verify_outcomes,
    ("collector/limits.py", "_counted", "bad_requests", "reason_of(exc_info)"): lambda: {
        reason_of(cls.__new__(cls)) for cls in subclasses(HttpProcessingError)
    },
    ("collector/handlers.py", "pixels_logged", "requests", "refused or 'recorded'"): lambda: (
        {"recorded"} | call_args("collector/spool/wal.py", "self._refuse", 0)
    ),
    ("collector/buffer.py", "_refuse", "events_dropped", "reason"): refusals,
    ("collector/spool/wal.py", "_refuse", "events_dropped", "reason"): refusals,
    ("collector/sinks/kafka.py", "_spill", "kafka_spilled", "reason"): lambda: call_args(
        "collector/sinks/kafka.py", "self._spill", 1
    ),
    ("consumers/pipeline.py", "_store", "rows_rejected", "reason"): ingest_reasons,
    # Stored.invalid's keys: what the invalid-traffic rule returns, but '' (valid).
    ("consumers/pipeline.py", "_store", "rows_invalid", "reason"): lambda: (
        returned("analytics/ivt.py", "classify") - {""}
    ),
    ("consumers/pipeline.py", "_fail", "retries", "step"): lambda: (
        call_args("consumers/pipeline.py", "self._fail", 1)
        | call_args("consumers/pipeline.py", "self._all", 0)
    ),
    ("consumers/sources/kafka_feed.py", "reject", "dlq_records", "reason"): ingest_reasons,
    ("consumers/sources/spool_feed.py", "batches", "batch_cuts", "reason"): lambda: (
        returned("consumers/sources/spool_feed.py", "SpoolFeed._due") - {""}
    ),
    # A fresh batch's reason, or a recorded one's (protocol.Batch: "replay").
    ("consumers/sources/kafka_feed.py", "batches", "batch_cuts", "self.flight.cut_by"): lambda: (
        returned("consumers/sources/kafka_batches.py", "_due") - {""} | {"replay"}
    ),
    ("analytics/query_server.py", "query", "QUERY_REQUESTS", "outcome"): query_outcomes,
    # Every Outcome(...) the store port's erasure makes: a refused request's, or the erasure's.
    ("analytics/query_server.py", "erase", "ERASE_REQUESTS", "asked.outcome"): erase_outcomes,
    ("analytics/query_server.py", "_erase", "ERASE_REQUESTS", "outcome.outcome"): erase_outcomes,
    ("analytics/dashboard/app.py", "handle", "READS", "endpoint"): lambda: call_args(
        "analytics/dashboard/app.py", "counted", 0
    ),
    ("analytics/dashboard/app.py", "handle", "READS", "outcome"): dashboard_read_outcomes,
}


def subclasses(cls: type) -> Iterator[type]:
    yield cls
    for sub in cls.__subclasses__():
        yield from subclasses(sub)


class Sites(ast.NodeVisitor):
    """Each place a file counts into a labelled counter: `<counter>.labels(...)`, and in the
    collector's handlers and signature gate the hot path's tallies, `self.<tally>[...]`
    (collector/tallies.py)."""

    def __init__(self, path: str, counters: dict[str, str], tallies: dict[str, str]) -> None:
        self.path = path
        self.counters = counters  # attribute (or app key) -> counter attribute
        self.tallies = tallies
        self.funcs: list[ast.AST] = []
        self.bound: list[dict[str, Values]] = []
        self.found: list[tuple[str, list[ast.expr], ast.AST | None, dict[str, Values]]] = []

    def names(self) -> dict[str, Values]:
        return {k: v for scope in self.bound for k, v in scope.items()}

    def _bind(self, pairs: list[tuple[ast.expr, ast.expr]]) -> dict[str, Values]:
        out = {}
        for target, source in pairs:
            values = strings(source, self.path)
            if isinstance(target, ast.Name) and values is not None:
                out[target.id] = values
        return out

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.funcs.append(node)
        self.generic_visit(node)
        self.funcs.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_For(self, node: ast.For) -> None:
        self.bound.append(self._bind([(node.target, node.iter)]))
        self.generic_visit(node)
        self.bound.pop()

    def _comprehension(
        self, node: ast.DictComp | ast.ListComp | ast.SetComp | ast.GeneratorExp
    ) -> None:
        self.bound.append(self._bind([(g.target, g.iter) for g in node.generators]))
        self.generic_visit(node)
        self.bound.pop()

    visit_DictComp = visit_ListComp = visit_SetComp = visit_GeneratorExp = _comprehension

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "labels":
            receiver = func.value
            key = None
            if isinstance(receiver, ast.Attribute):
                key = receiver.attr
            elif isinstance(receiver, ast.Subscript) and isinstance(receiver.slice, ast.Name):
                key = receiver.slice.id
            if key in self.counters:
                self._found(self.counters[key], node.args)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        value = node.value
        if (
            isinstance(value, ast.Attribute)
            and isinstance(value.value, ast.Name)
            and value.value.id == "self"
            and value.attr in self.tallies
        ):
            key = node.slice
            self._found(self.tallies[value.attr], key.elts if isinstance(key, ast.Tuple) else [key])
        self.generic_visit(node)

    def _found(self, counter: str, args: list[ast.expr]) -> None:
        self.found.append((counter, args, self.funcs[-1] if self.funcs else None, self.names()))


def counters_of(metrics: object) -> dict[str, Counter]:
    return {k: v for k, v in vars(metrics).items() if isinstance(v, Counter)}


def test_every_label_value_the_code_emits_is_made_at_0(settings: Settings) -> None:
    collector_metrics = CollectorMetrics(CollectorRegistry())
    handlers = create_app(settings, MemorySink(), collector_metrics)[COLLECTOR]
    _, store_counters = store_app_registry()
    _, dashboard_counters = dashboard_registry()
    packages: dict[str, dict[str, Counter]] = {
        "collector": counters_of(collector_metrics),
        "consumers": counters_of(ConsumerMetrics(CollectorRegistry())),
        "analytics": store_counters | dashboard_counters,
    }
    # The tallies of collector/handlers.py, by the counter each folds into.
    by_object = {id(c): name for name, c in packages["collector"].items()}

    def tallies_of(owner: object) -> dict[str, str]:
        return {
            name: by_object[id(tally.metric)]
            for name, tally in vars(owner).items()
            if hasattr(tally, "metric") and id(tally.metric) in by_object
        }

    tallied = {
        "collector/handlers.py": tallies_of(handlers),
        "collector/signing.py": tallies_of(handlers.gate),
    }
    assert set(tallied["collector/handlers.py"]) == {
        "requests", "accepted", "fixed", "limited", "flagged",
    }  # fmt: skip
    assert tallied["collector/signing.py"] == {"checks": "signature_checks"}
    seen_flows = set()
    checked = 0
    for package, counters in packages.items():
        made = {name: set(exposition_of(counter)) for name, counter in counters.items()}
        for file in sorted((ROOT / package).rglob("*.py")):
            path = str(file.relative_to(ROOT))
            sites = Sites(path, {n: n for n in counters}, tallied.get(path, {}))
            sites.visit(tree(path))
            for counter, args, func, bound in sites.found:
                choices = []
                for arg in args:
                    values = strings(arg, path, func, bound)
                    if values is None:
                        name = getattr(func, "name", "")
                        flow = (path, name, counter, ast.unparse(arg))
                        assert flow in FLOWS, f"{flow}: where do its values come from?"
                        seen_flows.add(flow)
                        values = FLOWS[flow]()
                    assert values, (path, counter, ast.unparse(arg))
                    choices.append(sorted(values))
                for labels in product(*choices):
                    checked += 1
                    assert labels in made[counter], f"{path}: {counter}{labels} is not made at 0"
    assert seen_flows == set(FLOWS), f"listed but no longer in the code: {set(FLOWS) - seen_flows}"
    assert checked > 200


def exposition_of(counter: Counter) -> set[tuple[str, ...]]:
    """The label values of a counter's children, as its samples show them."""
    (family,) = counter.collect()
    return {tuple(s.labels.values()) for s in family.samples if s.name.endswith("_total")}


def test_a_new_reason_at_any_emitting_line_fails_the_scan() -> None:
    """The scan above reads what it should: a constant the code could emit is found."""
    code = "def f(metrics):\n    metrics.events_dropped.labels('made_up_reason').inc()\n"
    sites = Sites("collector/handlers.py", {"events_dropped": "events_dropped"}, {})
    sites.visit(ast.parse(code))
    ((_, args, func, bound),) = sites.found
    assert strings(args[0], "collector/handlers.py", func, bound) == {"made_up_reason"}
    assert ("made_up_reason",) not in exposition_of(
        CollectorMetrics(CollectorRegistry()).events_dropped
    )
