"""config target: how build.json becomes a compiler command line (LOCKED).

    python build.py     compile bench.c with build.json's flags into ./bench and run it once

build.json (the file the agent edits) holds `opt` (-O0 .. -O3, -Os, -Ofast), `march_native`,
`unroll_loops`, `fast_math` and `extra` (more flags, space-separated). Every flag is checked
against an allow-list of optimisation flags: no -D/-U/-I/-include (they would change the program),
no -o/-B/-wrapper/-fplugin/@file (they would change the toolchain), no -fprofile*/-fdump* (files).
The compiler is $CC, default gcc.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPT_LEVELS = ("-O0", "-O1", "-O2", "-O3", "-Os", "-Ofast")
ALLOWED = re.compile(r"^-(f[a-z0-9][a-z0-9-]*(=[a-z0-9-]+)?|m[a-z0-9][a-z0-9-]*(=[a-z0-9-]+)?)$")
DENIED = re.compile(r"^-f(plugin|profile|auto-profile|dump|record|debug-prefix|file-prefix|"
                    r"macro-prefix|stack-usage|callgraph|opt-info|save)")


class BuildError(Exception):
    pass


def flags(config: dict) -> list[str]:
    unknown = set(config) - {"opt", "march_native", "unroll_loops", "fast_math", "extra"}
    if unknown:
        raise BuildError(f"build.json: unknown keys {sorted(unknown)}")
    opt = config.get("opt", "-O0")
    if opt not in OPT_LEVELS:
        raise BuildError(f"build.json: opt {opt!r} is not one of {', '.join(OPT_LEVELS)}")
    out = [opt]
    if config.get("march_native"):
        out.append("-march=native")
    if config.get("unroll_loops"):
        out.append("-funroll-loops")
    if config.get("fast_math"):
        out.append("-ffast-math")
    for flag in str(config.get("extra", "")).split():
        if not ALLOWED.match(flag) or DENIED.match(flag):
            raise BuildError(f"build.json: extra flag {flag!r} is not an allowed optimisation "
                             f"flag (-f... or -m...; no -D, -I, -o, -fplugin, -fprofile...)")
        out.append(flag)
    return out


def compile_bench(dest: Path) -> tuple[float, list[str]]:
    """Compile bench.c into `dest`; the seconds it took and the flags."""
    config = json.loads((HERE / "build.json").read_text(encoding="utf-8"))
    fl = flags(config)
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise BuildError(f"compiler {cc!r} not found: install gcc (apt-get install gcc) or set CC")
    t0 = time.perf_counter()
    p = subprocess.run([cc, *fl, "-std=c99", "-o", str(dest), str(HERE / "bench.c")],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise BuildError(f"{cc} {' '.join(fl)} failed: {p.stderr.strip()[-300:]}")
    return time.perf_counter() - t0, fl


if __name__ == "__main__":
    try:
        seconds, fl = compile_bench(HERE / "bench")
    except (BuildError, ValueError) as e:
        print(f"build_error: {e}")
        sys.exit(1)
    print(f"flags: {' '.join(fl)}")
    print(f"compile_s: {seconds:.3f}")
