"""The machine a run or a measurement happened on: what /proc/cpuinfo says about the CPU.

Read by the kernel dispatcher (its cache key), by ``refbnn compare`` (the machines of a report) and by
the benchmarks (the machine named beside every figure).
"""
from __future__ import annotations

import platform


def cpuinfo() -> dict:
    """model name and flags of the first processor in /proc/cpuinfo (Linux; empty elsewhere or when
    unreadable)."""
    out = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features", "CPU part", "CPU implementer") and key not in out:
                    out[key] = value.strip()
                if line.strip() == "" and out:
                    break            # the first processor's block is enough
    except OSError:
        pass
    return out


def cpu_model(info: dict | None = None) -> str:
    """The CPU's name: /proc/cpuinfo's model name (on ARM its implementer and part), else the platform's
    processor string, else the machine type."""
    info = cpuinfo() if info is None else info
    return (info.get("model name") or " ".join(filter(None, (info.get("CPU implementer"), info.get("CPU part"))))
            or platform.processor() or platform.machine() or "unknown CPU")
