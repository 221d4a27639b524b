"""The machine a benchmark or reproduction row ran on, for provenance in tools' outputs."""

import os
import platform
import subprocess


def machine() -> str:
    """CPU model, core count and GPU (if nvidia-smi sees one), e.g.
    'AMD EPYC 7B13, 2 cores, no GPU'."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = "no GPU"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpu = out.stdout.strip().splitlines()[0].split(" (UUID")[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {gpu}"
