"""Start-up of `tinylm train` in two trees, alternating: seconds from launch to the banner, to
step 10 and to the process's end, read from the child's own output as it arrives.

    python bench/startup_ab.py --data .carry/tinyshakespeare.txt --trees old=.carry/old new=. --runs 3 -- --preset speedrun --steps 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def one(tree: str, data: str, flags: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "tinylm", "train", "-d", os.path.abspath(data), "-o", "/tmp/startup_ab.model", "--force", *flags]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks = {}
    for line in proc.stdout:
        now = time.perf_counter() - t0
        if "TRAINING MODE" in line:
            marks.setdefault("banner", now)
        if "step 10 " in line:
            marks.setdefault("step10", now)
    proc.wait()
    marks["end"] = time.perf_counter() - t0
    marks["rc"] = proc.returncode
    return marks


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--trees", nargs="+", required=True, help="name=path ...")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("flags", nargs=argparse.REMAINDER)
    a = p.parse_args()
    flags = a.flags[1:] if a.flags[:1] == ["--"] else a.flags
    trees = [t.split("=", 1) for t in a.trees]
    for i in range(a.runs):
        for name, path in trees:
            m = one(path, a.data, flags)
            print(f"{name} run {i + 1}: " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()), flush=True)


if __name__ == "__main__":
    main()
