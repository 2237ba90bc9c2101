"""What the benchmark scripts (`benchmarks/`) share: the machine a measurement ran on, and a
timer that synchronises the device around the calls it times."""
from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from pathlib import Path


def cpu_cores() -> dict:
    """CPUs this process may use: affinity and the cgroup quota (a container's real share)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = None
    try:
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        quota = None if q == "max" else int(q) / int(period)
    except (OSError, ValueError):
        pass
    return dict(cores=min(cores, math.ceil(quota)) if quota else cores, affinity=cores, cgroup_quota=quota,
                cpu_count=os.cpu_count())


def _cpu_model() -> str | None:
    try:
        return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), None)
    except OSError:
        return platform.processor() or None


def _gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    p = torch.cuda.get_device_properties(0)
    info = dict(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        info["driver"] = repr(e)
    return info


def machine_info(packages: tuple[str, ...] = ()) -> dict:
    """Where and with what a measurement ran: UTC date, CPU model, usable cores (`cpu_cores`),
    1-minute load, Python, platform, torch, PyAV and its FFmpeg, the GPU (name, memory, SMs, CUDA,
    cuDNN, driver) where CUDA is, and the installed version of each of `packages` (None: absent)."""
    from importlib import metadata

    import av
    import torch

    info = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cpu=_cpu_model(), **cpu_cores(),
                load_avg_1min=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
                av=av.__version__, ffmpeg=".".join(map(str, av.library_versions["libavcodec"])), **_gpu())
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return dict(info, packages=versions) if packages else info


def timed(fn, steps: int, warmup: int = 0, device=None) -> float:
    """Seconds that `steps` calls of `fn()` take after `warmup` untimed calls; a CUDA `device`
    (a torch.device or a name) is synchronised before the clock starts and before it stops."""
    import torch

    dev = torch.device(device) if device is not None else None
    sync = (lambda: torch.cuda.synchronize(dev)) if dev is not None and dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return time.perf_counter() - t0
