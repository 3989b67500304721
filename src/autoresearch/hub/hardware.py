"""Hardware classes: results are compared only within one (`H100-80GB`, `cpu-2core`).

`AUTORESEARCH_HARDWARE` (or `--hardware`) names the class; otherwise it is detected: the first
NVIDIA GPU's name and memory from nvidia-smi, else the CPU core count.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess


def detect_hardware(explicit: str | None = None) -> str:
    name = explicit or os.environ.get("AUTORESEARCH_HARDWARE")
    if name:
        return name
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=10).stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            out = []
        if out and "," in out[0]:
            gpu, mem = (x.strip() for x in out[0].split(",", 1))
            model = re.sub(r"^(NVIDIA|Tesla|GeForce)\s+", "", gpu).split()[0] if gpu else "gpu"
            try:
                gb = round(float(mem) / 1024)
            except ValueError:
                gb = 0
            return f"{model}-{gb}GB" if gb else model
    return f"cpu-{os.cpu_count() or 1}core"
