"""Where the test suite's CPU time goes, by kind of process.

The suite's wall clock on 2 cores is its CPU time over two (it keeps both cores busy), so what shortens it is less
CPU, and this says whose: it runs a command (the whole suite by default) and samples, every ``--interval`` seconds,
the CPU time (user + system, from ``/proc``) of the command and its descendants, then sums them by kind: a Ray
worker by the actor or task it became (``ray::TrainController``, ``ray::IDLE``, ...), a Python process by its module
or script, a ``knnmix`` or ``ray`` command by its subcommand, anything else by its program (``raylet``,
``gcs_server``). A process is charged what it had used at its last sample, so the sums are lower bounds; the
``sampled_share`` of the machine's whole CPU time over the run (``/proc/stat``) says how much the kinds cover, and
``sampler_cpu_s`` what the sampling cost. Its exit status is the command's.

    python benchmarks/suite_cpu.py    # the whole suite (scripts/test.sh), ~12 min; writes results/suite-cpu-<date>.json
    python benchmarks/suite_cpu.py --out /tmp/x.json -- scripts/test.sh -n 0 tests/test_ray_train.py
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from knnmix.provenance import git_commit, machine

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
XDIST_WORKER = "import sys;exec(eval(sys.stdin.readline()))"  # the code execnet starts pytest-xdist's workers with


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core's user, nice and system time)."""
    with open("/proc/stat") as fh:
        user, nice, system = (int(v) for v in fh.readline().split()[1:4])
    return (user + nice + system) / TICK


def kind(argv: list[str]) -> str:
    """The kind of process a command line (``/proc/PID/cmdline``) belongs to; see the module's docstring."""
    if argv[0].startswith("ray::"):  # a Ray worker's title: the actor's class or the task (method names dropped)
        return argv[0].split()[0].split(".")[0]
    if any(a.endswith("default_worker.py") for a in argv[:3]):
        return "ray worker (starting)"
    if len(argv) == 1 and " " in argv[0]:  # a title set from the whole command line (one string)
        argv = argv[0].split()
    program = os.path.basename(argv[0])
    if program.startswith("python"):
        argv = argv[1:]
        while argv and argv[0].startswith("-") and argv[0] not in ("-m", "-c"):  # -u, -B, -X importtime, ...
            argv = argv[2:] if argv[0] in ("-X", "-W") else argv[1:]
        if not argv:
            return "python"
        if argv[0] == "-c":  # the code's first line names it (pytest-xdist's workers, which run the tests, by name)
            code = " ".join(argv[1:]).strip().splitlines()
            if code and code[0] == XDIST_WORKER:
                return "pytest-xdist worker"
            return f"python -c {code[0].split('(')[0][:60]}".rstrip() if code else "python -c"
        if argv[0] == "-m":
            return " ".join(["python", *argv[:3 if argv[1:2] == ["knnmix.cli"] else 2]])
        program = os.path.basename(argv[0])
        if program not in ("knnmix", "ray", "mlflow"):
            return f"python {program}"
    if program in ("knnmix", "ray", "mlflow") and len(argv) > 1:
        return f"{program} {argv[1]}"
    return program


def sample(pids: dict[tuple[int, int], list], root: int) -> None:
    """Update ``pids`` ((pid, start tick) -> [kind, cpu s]) with the process ``root`` and its descendants: a process
    is one when its parent is (a process once seen stays one when its parent has gone)."""
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except OSError:  # (gone meanwhile)
            continue
        procs[int(name)] = (int(fields[19]), int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, argv)
    ours = {root} | {pid for pid, start in pids if procs.get(pid, (None,))[0] == start}
    while new := {pid for pid, (_, parent, _, _) in procs.items() if parent in ours and pid not in ours}:
        ours |= new
    for pid in ours & procs.keys():
        start, _, cpu, argv = procs[pid]
        if not argv:  # (a zombie)
            continue
        now = kind(argv)
        got = pids.setdefault((pid, start), [now, cpu])
        got[1] = cpu
        if not now.startswith("ray::IDLE"):  # a worker keeps the last actor or task it ran, not "idle"
            got[0] = now


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interval", type=float, default=0.3, help="seconds between two samples")
    p.add_argument("--out", help="result JSON (default benchmarks/results/suite-cpu-<date>.json)")
    p.add_argument("command", nargs="*", help="the command to measure, after -- (default: scripts/test.sh)")
    args = p.parse_args(argv)
    if args.interval <= 0:
        p.error("--interval must be positive")
    command = args.command or [str(HERE.parent / "scripts" / "test.sh")]
    out = Path(args.out or HERE / "results" / f"suite-cpu-{time.strftime('%Y-%m-%d')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)  # (now, not after the run)
    pids: dict[tuple[int, int], list] = {}
    cpu0, t0, own0 = machine_cpu_s(), time.monotonic(), sum(os.times()[:2])
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        sample(pids, proc.pid)
        time.sleep(args.interval)
    wall, machine_cpu = time.monotonic() - t0, machine_cpu_s() - cpu0
    kinds: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for name, cpu in pids.values():
        kinds[name][0] += cpu
        kinds[name][1] += 1
    sampled = sum(cpu for cpu, _ in kinds.values())
    result = {"commit": git_commit(), "machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": command,
              "returncode": proc.returncode, "wall_s": round(wall, 1), "machine_cpu_s": round(machine_cpu, 1),
              "sampled_cpu_s": round(sampled, 1), "sampled_share": round(sampled / max(machine_cpu, 1e-9), 3),
              "interval_s": args.interval, "sampler_cpu_s": round(sum(os.times()[:2]) - own0, 1),
              "kinds": [{"kind": k, "cpu_s": round(cpu, 1), "processes": n}
                        for k, (cpu, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0])]}
    print(f"wall {wall:.0f} s, machine CPU {machine_cpu:.0f} s, sampled {sampled:.0f} s "
          f"({result['sampled_share']:.0%}); exit status {proc.returncode}")
    for row in result["kinds"][:25]:
        print(f"{row['cpu_s']:9.1f} s {row['processes']:5d} x {row['kind']}")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
