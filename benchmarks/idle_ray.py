"""What an idle local Ray costs the work beside it, measured side by side in one run.

Two 1-thread torch jobs (a fixed chain of matrix products, one per core of a 2-core machine) run side by side, in
rounds: alone, beside an idle private Ray as knnmix starts it (``ensure_ray``: GCS, raylet, log monitor, dashboard,
agent, prestarted workers), and beside one started without its dashboard. Each arm's time is the mean of its two
jobs; the arms alternate within every round, so the machine's drift reaches them alike. This is why the tests stop
their shared Ray after each test file (``tests/conftest.py``), and what a sweep's own Ray costs its trials. Each Ray
arm also records the machine's CPU seconds while its Ray starts (``ray.init``), settles (``--settle``: the end of its
start-up, then idling) and stops (``ray.shutdown``).

    python benchmarks/idle_ray.py               # about 3 minutes; writes benchmarks/results/idle-ray-<date>.json
    python benchmarks/idle_ray.py --rounds 1 --steps 50 --settle 0 --out /tmp/x.json   # a smoke version (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from suite_cpu import machine_cpu_s

from knnmix.provenance import git_commit, machine

HERE = Path(__file__).resolve().parent
JOB = ("import sys, time, torch\ntorch.set_num_threads(1)\na = torch.randn(400, 400)\nt = time.perf_counter()\n"
       "for _ in range(int(sys.argv[1])):\n    a = torch.tanh(a @ a * 0.01)\nprint(time.perf_counter() - t)")
#: arm -> ``ensure_ray`` arguments of the Ray idling beside the jobs (None: no Ray)
ARMS = {"alone": None, "beside an idle Ray": {},
        "beside an idle Ray without its dashboard": {"dashboard": False}}


def side_by_side(steps: int) -> float:
    """Seconds each of two 1-thread jobs of ``steps`` products took, run side by side (their mean)."""
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(steps)], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    return statistics.mean(float(job.communicate()[0]) for job in jobs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every arm once")
    p.add_argument("--steps", type=int, default=6000, help="matrix products per job (6000: ~8 s on an idle core)")
    p.add_argument("--settle", type=float, default=15, help="seconds a started Ray idles before its arm is timed")
    p.add_argument("--out", help="result JSON (default benchmarks/results/idle-ray-<date>.json)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.settle < 0:
        p.error("--rounds and --steps must be at least 1, --settle at least 0")
    out = Path(args.out or HERE / "results" / f"idle-ray-{time.strftime('%Y-%m-%d')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)  # (now, not after the rounds)
    import ray

    from knnmix.scale import ray_env

    os.environ.setdefault("RAY_TMPDIR", "/tmp/knnmix-idle-ray")
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    # the machine's CPU seconds while each Ray starts (ray.init), settles and stops (ray.shutdown)
    cpu = {arm: {"start": [], "settle": [], "stop": []} for arm, init in ARMS.items() if init is not None}
    for _ in range(args.rounds):
        for arm, init in ARMS.items():
            if init is not None:
                c0 = machine_cpu_s()
                ray_env.ensure_ray(num_cpus=2, **init)
                c1 = machine_cpu_s()
                time.sleep(args.settle)
                cpu[arm]["start"].append(round(c1 - c0, 2))
                cpu[arm]["settle"].append(round(machine_cpu_s() - c1, 2))
            try:
                seconds[arm].append(side_by_side(args.steps))
            finally:
                c0 = machine_cpu_s()
                ray.shutdown()
                if init is not None:
                    cpu[arm]["stop"].append(round(machine_cpu_s() - c0, 2))
    base = statistics.mean(seconds["alone"])
    result = {"commit": git_commit(), "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "steps": args.steps, "settle_s": args.settle,
              "arms": {arm: {"seconds": s, "mean_s": statistics.mean(s), "ratio_to_alone": statistics.mean(s) / base,
                             **({f"{k}_cpu_s": v for k, v in cpu[arm].items()} if arm in cpu else {})}
                       for arm, s in seconds.items()}}
    for arm, r in result["arms"].items():
        rounds = ", ".join(f"{x:.2f}" for x in r["seconds"])
        costs = "".join(f", {k} {statistics.mean(r[f'{k}_cpu_s']):.1f}" for k in ("start", "settle", "stop")
                        if f"{k}_cpu_s" in r)
        costs = costs and f"; CPU-s{costs[1:]}"
        print(f"{arm:42s} {r['mean_s']:6.2f} s  x{r['ratio_to_alone']:.2f}  ({rounds}){costs}")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
