"""The environment of processes that compute on host CPUs (the demo's stages, the benchmark's parts).

Two settings matter on a CPU and can only be made before a process starts:

- One host device. The test suite (and the Makefile) emulate 8 devices with
  `--xla_force_host_platform_device_count=8` to exercise meshes; a training process on a small CPU
  is fastest with one device, so children drop that flag.
- glibc malloc on transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc >= 2.35;
  ignored elsewhere). XLA's CPU runtime allocates and frees its large activation buffers every step;
  on 4 KiB pages the kernel zeroes and maps them page by page. Measured on the S-S bench step
  (2 cores): system time 1.46 -> 0.29 s per step, step 7.3 -> 6.9 s. Set it yourself for
  `adaptation-train` on CPU (the Makefile exports it); a value already set is kept.
"""

from __future__ import annotations

import os
import re

HUGE_PAGE_MALLOC = "glibc.malloc.hugetlb=1"
_FORCED_DEVICES = re.compile(r"--xla_force_host_platform_device_count=\d+")


def cpu_child_env() -> dict:
    """A child process's environment: `os.environ` without the emulated host device count, with malloc
    on huge pages unless GLIBC_TUNABLES is set, and TensorFlow's C++ logs quiet."""
    env = dict(os.environ)
    flags = _FORCED_DEVICES.sub("", env.get("XLA_FLAGS", "")).strip()
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    env.setdefault("GLIBC_TUNABLES", HUGE_PAGE_MALLOC)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env
