"""A small thread-safe Prometheus registry (counters, gauges, histograms) rendered in the text exposition format."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        with self._lock:
            return sum(self._counts.get(self._key(labels), []))

    def count_above(self, bound: float, **labels: str) -> int:
        """Observations greater than `bound` (a bucket boundary)."""
        with self._lock:
            counts = self._counts.get(self._key(labels), [])
            return sum(c for b, c in zip((*self.buckets, math.inf), counts, strict=False) if b > bound)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(c), self._sums[k]) for k, c in self._counts.items())
        lines = []
        for key, counts, total in items:
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class Registry:
    """The metrics of one server; `render()` is the body of GET /metrics."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> None:
        self._metrics.append(metric)

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self.register(metric)
        return metric

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help_text, labels)
        self.register(metric)
        return metric

    def histogram(self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> Histogram:
        metric = Histogram(name, help_text, buckets, labels)
        self.register(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines += metric.header() + metric.render()
        return "\n".join(lines) + "\n"


class ServerMetrics:
    """The metrics `bmsearch serve` publishes."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.requests = r.counter(
            "bmsearch_http_requests_total",
            "HTTP requests by endpoint, method and status.",
            ("endpoint", "method", "status"),
        )
        self.latency = r.histogram(
            "bmsearch_http_request_duration_seconds", "HTTP request latency.", LATENCY_BUCKETS, ("endpoint",)
        )
        self.errors = r.counter(
            "bmsearch_errors_total", "Error responses by endpoint and error code.", ("endpoint", "code")
        )
        self.batch_size = r.histogram("bmsearch_batch_size", "Requests processed together in one batch.", BATCH_BUCKETS)
        self.batch_queries = r.histogram(
            "bmsearch_batch_queries", "Query texts encoded in one encoder call.", BATCH_BUCKETS
        )
        self.batch_seconds = r.histogram(
            "bmsearch_batch_duration_seconds", "Time to encode and search one batch.", LATENCY_BUCKETS
        )
        self.queries = r.counter("bmsearch_queries_total", "Query texts searched, by index.", ("index",))
        self.reloads = r.counter(
            "bmsearch_reloads_total", "Generations switched to without restart, by index.", ("index",)
        )
        self.reload_errors = r.counter("bmsearch_reload_errors_total", "Failed reload checks, by index.", ("index",))
        self.generation = r.gauge("bmsearch_index_generation", "Live generation number, by index.", ("index",))
        self.rows = r.gauge("bmsearch_index_rows", "Rows in the live generation, by index.", ("index",))
        self.ready = r.gauge("bmsearch_ready", "1 once the model and indexes are loaded.")
        self.ready.set(0)

    def render(self) -> str:
        return self.registry.render()
