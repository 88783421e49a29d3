"""Prometheus metrics of one API app (its own registry: two apps in one process never share counters)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_RATE_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    """Counters and histograms the handlers feed; gauges are read from the runner at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mr_notebook_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "mr_notebook_generated_tokens", "Completion tokens generated", ["model"], registry=self.registry
        )
        self.prompt_tokens = Counter(
            "mr_notebook_prompt_tokens", "Prompt tokens processed", ["model"], registry=self.registry
        )
        self.ttft = Histogram(
            "mr_notebook_time_to_first_token_seconds",
            "Time from request to first generated token",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.rate = Histogram(
            "mr_notebook_tokens_per_second",
            "Generation speed after the first token",
            ["model"],
            buckets=_RATE_BUCKETS,
            registry=self.registry,
        )
        self.loaded = Gauge("mr_notebook_loaded_models", "Models loaded in worker processes", registry=self.registry)
        self.queue = Gauge(
            "mr_notebook_queue_depth", "Requests waiting or running per loaded model", ["model"], registry=self.registry
        )
        self.sequences = Gauge(
            "mr_notebook_active_sequences",
            "Sequences being decoded per loaded model (continuous batching)",
            ["model"],
            registry=self.registry,
        )
        self.waiting = Gauge(
            "mr_notebook_waiting_requests",
            "Requests waiting for a free sequence slot per loaded model",
            ["model"],
            registry=self.registry,
        )
        self.batch_fill = Gauge(
            "mr_notebook_batch_fill",
            "Share of the decode batch used lately per loaded model (0 to 1)",
            ["model"],
            registry=self.registry,
        )

    def request(self, route: str, method: str, status: int) -> None:
        self.requests.labels(route, method, str(status)).inc()

    def generation(
        self, model: str, *, prompt_tokens: int, completion_tokens: int, ttft: float | None, duration: float | None
    ) -> None:
        """Record one finished generation; ``duration`` runs from the first token to the last."""
        self.tokens.labels(model).inc(completion_tokens)
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
        if duration and duration > 0 and completion_tokens > 1:
            # The first token's time belongs to TTFT; the rate covers the tokens after it.
            self.rate.labels(model).observe((completion_tokens - 1) / duration)

    def render(
        self,
        loaded: int,
        queue_depth: Callable[[], dict[str, int]],
        sequences: Callable[[], dict[str, dict[str, float]]] | None = None,
    ) -> bytes:
        """The Prometheus text exposition, with the live gauges refreshed first."""
        self.loaded.set(loaded)
        self.queue.clear()
        for model, depth in queue_depth().items():
            self.queue.labels(model).set(depth)
        for gauge in (self.sequences, self.waiting, self.batch_fill):
            gauge.clear()
        for model, stats in (sequences() if sequences is not None else {}).items():
            self.sequences.labels(model).set(stats["active"])
            self.waiting.labels(model).set(stats["queued"])
            self.batch_fill.labels(model).set(stats["batch_fill"])
        return generate_latest(self.registry)
