"""`GET /metrics`: the vLLM Prometheus series a router scrapes, from live state."""

from __future__ import annotations

from backends.sim.config import SimConfig
from backends.sim.stats import SimStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = ("stop", "length", "abort", "error", "repetition")


def render_metrics(config: SimConfig, stats: SimStats) -> str:
    labels = f'engine="0",model_name="{config.models[0]}"'
    usage = min(1.0, stats.kv_tokens / config.kv_cache_tokens)
    lines: list[str] = []

    def series(name: str, kind: str, value: float, doc: str) -> None:
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{{{labels}}} {float(value)}")

    series("vllm:num_requests_running", "gauge", stats.running,
           "Number of requests in model execution batches.")  # fmt: skip
    series("vllm:num_requests_waiting", "gauge", stats.waiting,
           "Number of requests waiting to be processed.")  # fmt: skip
    if config.wire.kv_cache_metric:
        series("vllm:kv_cache_usage_perc", "gauge", usage,
               "KV-cache usage. 1 means 100 percent usage.")  # fmt: skip
    if config.wire.gpu_cache_metric:
        series("vllm:gpu_cache_usage_perc", "gauge", usage,
               "GPU KV-cache usage. 1 means 100 percent usage.")  # fmt: skip
    series("vllm:prompt_tokens_total", "counter", stats.prompt_tokens_total,
           "Number of prefill tokens processed.")  # fmt: skip
    series("vllm:generation_tokens_total", "counter", stats.generation_tokens_total,
           "Number of generation tokens processed.")  # fmt: skip
    lines.append("# HELP vllm:request_success_total Count of successfully processed requests.")
    lines.append("# TYPE vllm:request_success_total counter")
    for reason in _REASONS:
        value = float(stats.finished[reason])
        lines.append(
            f'vllm:request_success_total{{engine="0",finished_reason="{reason}",'
            f'model_name="{config.models[0]}"}} {value}'
        )
    return "\n".join(lines) + "\n"
