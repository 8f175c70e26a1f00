"""Prometheus metrics of the server (`GET /metrics`, text format).

Per request (observed when it finishes): time to first token, time per output token after the
first, end-to-end latency, prompt and generated tokens, finish reasons. Read from the engine at
scrape time: running and waiting requests, KV blocks in use, prefix-cache hit rate, preemptions.
Each server has its own registry, so several servers in one process (tests) do not collide.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from engine.sequence import RequestOutput

PREFIX = "engine"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)


class ServerMetrics:
    def __init__(self, engine: Any, model_name: str):
        self.engine = engine  # engine.AsyncLLM
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Time to first token", labels,
                              buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self.tpot = Histogram(f"{PREFIX}_time_per_output_token_seconds", "Time per output token after the first", labels,
                              buckets=_TOKEN_BUCKETS, registry=self.registry).labels(model_name)
        self.e2e = Histogram(f"{PREFIX}_e2e_request_latency_seconds", "End-to-end request latency", labels,
                             buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens of finished requests", labels,
                                     registry=self.registry).labels(model_name)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens", "Generated tokens of finished requests", labels,
                                         registry=self.registry).labels(model_name)
        self.finished = Counter(f"{PREFIX}_request_success", "Finished samples by finish reason", labels + ["finished_reason"],
                                registry=self.registry)
        self.model_name = model_name
        self.registry.register(_EngineCollector(self))

    def observe_request(self, out: RequestOutput) -> None:
        m = out.metrics
        if m.ttft is not None:
            self.ttft.observe(m.ttft)
        if m.latency is not None:
            self.e2e.observe(m.latency)
            if m.ttft is not None and m.num_generated_tokens > 1:
                self.tpot.observe((m.latency - m.ttft) / (m.num_generated_tokens - 1))
        self.prompt_tokens.inc(m.num_prompt_tokens)
        self.generation_tokens.inc(m.num_generated_tokens)
        for c in out.outputs:
            self.finished.labels(self.model_name, c.finish_reason or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Gauges and counters read from the engine when Prometheus scrapes."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics

    def collect(self):
        llm, name = self.metrics.engine, self.metrics.model_name
        stats = llm.stats
        values = [
            ("num_requests_running", "Requests being scheduled", GaugeMetricFamily, llm.num_running),
            ("num_requests_waiting", "Requests waiting for the scheduler", GaugeMetricFamily, llm.num_waiting),
            ("kv_blocks_used", "KV cache blocks in use", GaugeMetricFamily, stats.blocks_in_use),
            ("kv_blocks_total", "KV cache blocks", GaugeMetricFamily, stats.num_blocks),
            ("kv_cache_usage_perc", "Fraction of KV blocks in use", GaugeMetricFamily,
             stats.blocks_in_use / stats.num_blocks if stats.num_blocks else 0.0),
            ("prefix_cache_hit_rate", "Prompt blocks served by the prefix cache", GaugeMetricFamily,
             stats.prefix_cache_hit_rate),
            ("num_preemptions", "Sequence groups preempted (recomputed)", CounterMetricFamily, stats.num_preemptions),
            ("requests_aborted", "Requests aborted (client gone, shutdown)", CounterMetricFamily, llm.num_aborted),
        ]
        for key, doc, family, value in values:
            metric = family(f"{PREFIX}_{key}", doc, labels=["model_name"])
            metric.add_metric([name], float(value))
            yield metric
