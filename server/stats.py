"""Per-session statistics and the server's Prometheus text exposition.

Latencies are kept in ``engines.latency.LatencyRing``s, so p50/p99 describe recent
behaviour and memory stays constant however long a session runs.
"""

from __future__ import annotations


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(server: dict, sessions: list[dict]) -> str:
    """Prometheus text format (version 0.0.4) for the server and its sessions.

    ``server`` holds server-wide gauges/counters; ``sessions`` the ``Session.stats()`` dicts.
    """
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    metric("etf_sessions_active", "gauge", "Live sessions.", [({}, server["sessions"])])
    metric("etf_sessions_max", "gauge", "Session capacity.", [({}, server["max_sessions"])])
    metric(
        "etf_sessions_started_total", "counter", "Sessions accepted since start.",
        [({}, server["sessions_started"])],
    )
    metric(
        "etf_sessions_refused_total", "counter", "Offers refused (capacity, token, bad input).",
        [({"reason": k}, v) for k, v in sorted(server["refused"].items())],
    )
    metric("etf_uptime_seconds", "gauge", "Seconds since the server started.",
           [({}, round(server["uptime_s"], 3))])
    dev = server.get("device_worker")
    if dev:  # the neural engines' batching worker
        metric("etf_device_batches_total", "counter", "Engine calls of the device worker.",
               [({}, dev["batches"])])
        metric("etf_device_batch_mean", "gauge", "Mean frames per engine call.",
               [({}, dev["mean_batch"])])
        metric("etf_device_frame_ms", "gauge",
               "Per-frame latency on the device worker (wait for the batch + compute).",
               [({"quantile": q}, dev["latency_ms"]["total"][q]) for q in ("p50", "p99")])
    per = [(s["session"], s) for s in sessions]
    metric("etf_frames_total", "counter", "Video frames sent.",
           [({"session": sid}, s["frames_sent"]) for sid, s in per])
    metric("etf_frames_dropped_total", "counter", "Frames skipped because compute fell behind.",
           [({"session": sid}, s["frames_dropped"]) for sid, s in per])
    metric("etf_fps", "gauge", "Video frames per second sent over the last seconds.",
           [({"session": sid}, s["fps"]) for sid, s in per])
    metric("etf_audio_underflows_total", "counter", "Jitter buffer underflows.",
           [({"session": sid}, s["audio"]["underflows"]) for sid, s in per])
    metric("etf_audio_buffer_ms", "gauge", "Audio waiting in the jitter buffer.",
           [({"session": sid}, s["queues"]["audio_ms"]) for sid, s in per])
    stage_samples = []
    for sid, s in per:
        for stage, q in s["latency_ms"].items():
            for quant, key in (("0.5", "p50"), ("0.99", "p99")):
                stage_samples.append(
                    ({"session": sid, "stage": stage, "quantile": quant}, q[key] / 1e3)
                )
    metric("etf_stage_latency_seconds", "summary",
           "Per-frame latency by pipeline stage (recent window).", stage_samples)
    return "\n".join(lines) + "\n"
