"""Helpers shared by the benchmark scripts: machine description, timing and test photographs."""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import date

import cv2
import numpy as np

from dgs_trainer.samples import sample_photos


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def header(title: str) -> str:
    command = " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    return (
        f"## {title}\n\n- machine: {machine()}\n- date: {date.today().isoformat()}\n"
        f"- command: `python {command}`\n"
    )


def photos(size: int | None = None) -> list[np.ndarray]:
    """scikit-image's sample photographs as RGB uint8, optionally resized to ``size`` x ``size`` (bicubic)."""
    images = list(sample_photos().values())
    if size:
        images = [cv2.resize(im, (size, size), interpolation=cv2.INTER_CUBIC) for im in images]
    return images


def peak_resident_gb() -> float:
    """This process's peak resident memory in GB. Not `resource.getrusage`: its ru_maxrss survives fork and exec, so
    a spawned child would report its parent's peak when that is higher; /proc's VmHWM is the process's own."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb / 1024**2


def seconds(fn) -> float:
    """Wall time of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
