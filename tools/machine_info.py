"""The machine a benchmark or reproduction row ran on, for provenance in tools' outputs."""

import os
import platform
import re
import subprocess


def describe_cpu(cpuinfo: str) -> str:
    """The CPU of a /proc/cpuinfo text: its model name and the widest vector unit that
    TensorFlow's kernels use (AVX-512 or AVX2), which is where two CPUs' results differ.
    A virtual machine often reports a bare family name ("AMD EPYC"); then the family and
    model numbers tell one generation from another.

    Example:
        >>> describe_cpu("model name\\t: AMD EPYC\\ncpu family\\t: 25\\nmodel\\t\\t: 17\\n"
        ...              "flags\\t\\t: fpu avx2 avx512f\\n")
        'AMD EPYC (family 25 model 17, AVX-512)'
        >>> describe_cpu("model name\\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz\\n"
        ...              "flags\\t\\t: fpu avx2\\n")
        'Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz (AVX2)'
    """
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor's
            fields[key.strip()] = value.strip()
    name = fields.get("model name", platform.machine())
    flags = set(fields.get("flags", "").split())
    details = []
    if not re.search(r"\d", name) and "cpu family" in fields and "model" in fields:
        details.append(f"family {fields['cpu family']} model {fields['model']}")
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    if vector:
        details.append(vector)
    return f"{name} ({', '.join(details)})" if details else name


def machine() -> str:
    """CPU, core count and GPU (if nvidia-smi sees one), e.g.
    'AMD EPYC (family 25 model 17, AVX-512), 2 cores, no GPU'."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = describe_cpu(f.read())
    except OSError:
        cpu = platform.machine()
    gpu = "no GPU"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpu = out.stdout.strip().splitlines()[0].split(" (UUID")[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {gpu}"


def report_rows(rows, out, argv) -> list:
    """Print each of a benchmark's rows (an iterable, measured as it is consumed) as a
    JSON line, then write them to ``out`` (if given) with the machine and the command
    that measured them; the rows."""
    import json

    from keras_hashing.fileio import write_json

    done = []
    for row in rows:
        done.append(row)
        print(json.dumps(row), flush=True)
    if out:
        write_json(out, {"machine": machine(), "command": " ".join(["python"] + list(argv)),
                         "rows": done})
    return done
