"""What every benchmark script records: the environment, per-call wall/CPU time, peak memory, spread.

Shared by ``bench_kernels.py``, ``bench_training.py`` and ``bench_steering.py`` (imported as a sibling
module: the scripts run as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()`` or ``None``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def load_avg() -> list[float] | None:
    """1/5/15-minute load averages, rounded to 2 decimals (``None`` where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_state() -> str:
    """Short HEAD commit, with a note when ``kernels/``, ``adapters/`` or ``sae_rad_ext/`` differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "kernels", "adapters", "sae_rad_ext"],
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + (" (library files modified)" if dirty else "")


def environment(device: str = "cpu") -> dict:
    """The run's environment: CPU model, cores, torch/sae_lens/python versions, threads, load at start."""
    import sae_lens
    import torch

    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sae_lens": getattr(sae_lens, "__version__", None),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None,
        "git": git_state(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg_start": load_avg(),
    }


def command_line(script: str, argv: list[str] | None = None) -> str:
    """How this run was started, for the results file: ``python benchmarks/<script>`` + its arguments,
    minus ``--out PATH`` (where the file went is not part of what was measured)."""
    args = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for x in args:
        if skip:
            skip = False
        elif x in ("--out", "--json", "--results"):
            skip = True
        elif not x.startswith(("--out=", "--json=", "--results=")):
            kept.append(shlex.quote(x))
    return " ".join(["python", f"benchmarks/{script}", *kept])


def finish_environment(env: dict) -> dict:
    """Add the end-of-run load average and time to an :func:`environment` dict (in place; returned)."""
    env["load_avg_end"] = load_avg()
    env["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return env


def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> tuple[float, float, float]:
    """Run ``fn`` once; return (wall, user CPU, system CPU) seconds of this process (all its threads)."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    sync()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime


def _status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> int | None:
    """Reset the kernel's resident-set high-water mark (Linux ``clear_refs``); return VmRSS in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_kib("VmRSS:")


def peak_rss_delta_mib(base_kib: int | None) -> float | None:
    """Peak resident memory above ``base_kib`` (from :func:`reset_peak_rss`) since that reset, MiB."""
    hwm = _status_kib("VmHWM:")
    if base_kib is None or hwm is None:
        return None
    return round((hwm - base_kib) / 1024, 1)


def summarize(wall: list[float], user: list[float], sys_: list[float], scale: float = 1.0) -> dict:
    """Median, min, max and all runs of ``wall`` (× ``scale``), plus median user and system CPU time.

    ``spread_pct`` is (max − min) / median in percent: how much the rounds disagreed.
    """
    w = [x * scale for x in wall]
    med = statistics.median(w)
    return {
        "median": med,
        "min": min(w),
        "max": max(w),
        "spread_pct": 100 * (max(w) - min(w)) / med if med else None,
        "runs": w,
        "user_median": statistics.median(user) * scale,
        "sys_median": statistics.median(sys_) * scale,
    }
