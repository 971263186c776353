"""Per-session statistics and the server's Prometheus text exposition.

Latencies are kept in ``engines.latency.LatencyRing``s, so p50/p99 describe recent
behaviour and memory stays constant however long a session runs.
"""

from __future__ import annotations


def prometheus_text(server: dict, sessions: list[dict]) -> str:
    """Prometheus text format (version 0.0.4) for the server and its sessions, written by
    ``prometheus_client``.

    ``server`` holds server-wide gauges/counters; ``sessions`` the ``Session.stats()`` dicts.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(server, sessions))
    return generate_latest(registry).decode("utf-8")


class _Snapshot:
    """A prometheus_client collector over one snapshot of the server's statistics."""

    def __init__(self, server: dict, sessions: list[dict]) -> None:
        self.server = server
        self.sessions = sessions

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

        server, per = self.server, [(s["session"], s) for s in self.sessions]

        def gauge(name, help_, value):
            return GaugeMetricFamily(name, help_, value=value)

        def per_session(cls, name, help_, get):
            fam = cls(name, help_, labels=["session"])
            for sid, s in per:
                fam.add_metric([sid], get(s))
            return fam

        yield gauge("etf_sessions_active", "Live sessions.", server["sessions"])
        yield gauge("etf_sessions_max", "Session capacity.", server["max_sessions"])
        yield CounterMetricFamily("etf_sessions_started_total", "Sessions accepted since start.",
                                  value=server["sessions_started"])
        refused = CounterMetricFamily("etf_sessions_refused_total",
                                      "Offers refused (capacity, token, bad input).",
                                      labels=["reason"])
        for k, v in sorted(server["refused"].items()):
            refused.add_metric([k], v)
        yield refused
        yield gauge("etf_uptime_seconds", "Seconds since the server started.",
                    round(server["uptime_s"], 3))
        dev = server.get("device_worker")
        if dev:  # the neural engines' batching worker
            yield CounterMetricFamily("etf_device_batches_total",
                                      "Engine calls of the device worker.", value=dev["batches"])
            yield gauge("etf_device_batch_mean", "Mean frames per engine call.",
                        dev["mean_batch"])
            fam = GaugeMetricFamily(
                "etf_device_frame_ms",
                "Per-frame latency on the device worker (wait for the batch + compute).",
                labels=["quantile"])
            for q in ("p50", "p99"):
                fam.add_metric([q], dev["latency_ms"]["total"][q])
            yield fam
        yield per_session(CounterMetricFamily, "etf_frames_total", "Video frames sent.",
                          lambda s: s["frames_sent"])
        yield per_session(CounterMetricFamily, "etf_frames_dropped_total",
                          "Frames skipped because compute fell behind.",
                          lambda s: s["frames_dropped"])
        yield per_session(GaugeMetricFamily, "etf_fps",
                          "Video frames per second sent over the last seconds.",
                          lambda s: s["fps"])
        yield per_session(GaugeMetricFamily, "etf_below_rate",
                          "1 while the session has sent under 90% of its frame rate for "
                          "over 3 s.", lambda s: int(s["below_rate"]["now"]))
        yield per_session(CounterMetricFamily, "etf_below_rate_seconds",
                          "Seconds spent below 90% of the frame rate (after 3 s there).",
                          lambda s: s["below_rate"]["seconds_total"])
        yield per_session(CounterMetricFamily, "etf_render_cpu_seconds",
                          "CPU seconds of the session's render process.",
                          lambda s: s.get("render_cpu_s", 0.0))
        yield per_session(CounterMetricFamily, "etf_audio_underflows_total",
                          "Jitter buffer underflows.", lambda s: s["audio"]["underflows"])
        yield per_session(GaugeMetricFamily, "etf_audio_buffer_ms",
                          "Audio waiting in the jitter buffer.",
                          lambda s: s["queues"]["audio_ms"])
        yield per_session(GaugeMetricFamily, "etf_audio_buffer_target_ms",
                          "The jitter buffer's target depth (adapts to the network).",
                          lambda s: s["queues"]["audio_target_ms"])
        yield per_session(GaugeMetricFamily, "etf_speech_queued_ms",
                          "Agent speech (pushed audio, say) queued to be spoken.",
                          lambda s: s["speech_queue"]["queued_ms"])
        yield per_session(CounterMetricFamily, "etf_interrupts_total",
                          "Interrupts (barge-in) received.",
                          lambda s: s["speech_queue"]["interrupts"])
        stages = Metric("etf_stage_latency_seconds",
                        "Per-frame latency by pipeline stage (recent window).", "summary")
        for sid, s in per:
            for stage, q in s["latency_ms"].items():
                for quant, key in (("0.5", "p50"), ("0.99", "p99")):
                    stages.add_sample("etf_stage_latency_seconds",
                                      {"session": sid, "stage": stage, "quantile": quant},
                                      q[key] / 1e3)
        yield stages
