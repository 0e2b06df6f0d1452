"""What each test costs in CPU time: the test suite run one test at a time, the machine's CPU time charged to each.

``suite_cpu.py`` says whose processes the suite's CPU time goes to; this says which tests it goes to. It runs pytest
through ``scripts/test.sh`` in one process (``-n 0``, so tests never overlap) with this file as a plugin, which
reads the whole machine's busy CPU time (``/proc/stat``) before and after each test: a test is charged everything
the machine did meanwhile (its Ray, its subprocesses and its fixtures' set-up and tear-down included; anything else
running on the machine too, so run it on an otherwise idle machine). Prints the most costly tests and files and
writes every test's ``cpu_s`` and ``wall_s``. Its exit status is pytest's.

    python benchmarks/per_test_cpu.py    # every test, ~17 min on 2 cores; writes results/per-test-cpu-<date>.json
    python benchmarks/per_test_cpu.py --out /tmp/x.json -- tests/test_sweep.py -k resume
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from suite_cpu import machine_cpu_s

from knnmix.provenance import git_commit, machine

HERE = Path(__file__).resolve().parent
ROWS_ENV = "KNNMIX_PER_TEST_CPU_ROWS"  # where the plugin appends one JSON line per test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # (the plugin: set-up, call and tear-down of one test)
    cpu, wall = machine_cpu_s(), time.monotonic()
    yield
    row = {"test": item.nodeid, "cpu_s": round(machine_cpu_s() - cpu, 2), "wall_s": round(time.monotonic() - wall, 2)}
    with open(os.environ[ROWS_ENV], "a") as fh:
        fh.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="result JSON (default benchmarks/results/per-test-cpu-<date>.json)")
    p.add_argument("--top", type=int, default=30, help="tests to print, most costly first")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments, after -- (default: the whole suite)")
    args = p.parse_args(argv)
    if args.top < 0:
        p.error("--top must be at least 0")
    out = Path(args.out or HERE / "results" / f"per-test-cpu-{time.strftime('%Y-%m-%d')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)  # (now, not after the run)
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rows_file.touch()
        env = {**os.environ, ROWS_ENV: str(rows_file),
               "PYTHONPATH": os.pathsep.join(x for x in (str(HERE), os.environ.get("PYTHONPATH")) if x)}
        command = [str(HERE.parent / "scripts" / "test.sh"), "-n", "0", "-p", "per_test_cpu", *args.pytest_args]
        cpu0, t0 = machine_cpu_s(), time.monotonic()
        returncode = subprocess.run(command, env=env).returncode
        wall, machine_cpu = time.monotonic() - t0, machine_cpu_s() - cpu0
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    rows.sort(key=lambda r: -r["cpu_s"])
    files: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        f = files[r["test"].split("::")[0]]
        f[0], f[1], f[2] = f[0] + r["cpu_s"], f[1] + r["wall_s"], f[2] + 1
    result = {"commit": git_commit(), "machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": command,
              "returncode": returncode, "wall_s": round(wall, 1), "machine_cpu_s": round(machine_cpu, 1),
              "tests": len(rows), "tests_cpu_s": round(sum(r["cpu_s"] for r in rows), 1),
              "files": [{"file": k, "cpu_s": round(c, 1), "wall_s": round(w, 1), "tests": n}
                        for k, (c, w, n) in sorted(files.items(), key=lambda kv: -kv[1][0])],
              "rows": rows}
    print(f"{len(rows)} tests: {result['tests_cpu_s']:.0f} CPU-s in {wall:.0f} s (machine CPU {machine_cpu:.0f} s); "
          f"exit status {returncode}")
    for f in result["files"][:10]:
        print(f"{f['cpu_s']:8.1f} CPU-s {f['tests']:4d} tests  {f['file']}")
    for r in rows[: args.top]:
        print(f"{r['cpu_s']:8.1f} CPU-s {r['wall_s']:7.1f} s  {r['test']}")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
