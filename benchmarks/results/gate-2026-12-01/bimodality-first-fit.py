"""Per-class bimodality of the normalised losses at knnmix's mixture fits (tuning seed 100, quick tier schedule).

    python benchmarks/results/gate-2026-12-01/bimodality-first-fit.py none asymmetric:0.4 symmetric:0.5

Trains knnmix's fixed quick-tier cell of each setting on tuning seed 100 and, at epochs 10 (the first fit), 16 and
24, reports per class (by current target): the fraction of wrong labels, BIC(1 component) - BIC(2) per sample,
Ashman's D of a two-component fit, and the fraction the run's own mixture flags noisy. Writes
bimodality-first-fit.json beside this file. Training-set diagnostics only: no test figure is read.
"""
import os, sys, json
import numpy as np, torch
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path[:0] = [os.path.join(ROOT, "src"), os.path.join(ROOT, "benchmarks")]
from sklearn.mixture import GaussianMixture
from knnmix import config as C
from knnmix.engine import train as E
from knnmix_bench.tiers import TIERS

def dbic(x):
    x = x.reshape(-1, 1)
    b = [GaussianMixture(k, reg_covar=5e-4, random_state=0).fit(x).bic(x) for k in (1, 2)]
    return (b[0] - b[1]) / len(x)  # > 0: two components fit better (per sample)

def ashman(x):
    g = GaussianMixture(2, reg_covar=5e-4, random_state=0).fit(x.reshape(-1, 1))
    m, v = g.means_.ravel(), g.covariances_.ravel()
    return abs(m[0] - m[1]) * np.sqrt(2 / (v[0] + v[1]))

out = {}
tier = TIERS["quick"]
for setting in sys.argv[1:]:
    values = tier.cell_config("knnmix", setting, 100)
    cfg = C.replace(C.from_dict({}), **{**values, "out": f"/tmp/knnmix-bimodality/{setting}", "log_every": 10**6})
    run = E.build_run(cfg)
    rows = []
    for epoch in range(1, 26):
        rec = E.run_epoch(run, epoch); run.epoch = epoch
        if epoch not in (4, 6, 10, 16, 24):
            continue
        if run.state.loss_history.shape[0] == 0:
            continue
        loss = run.state.loss_history[-1].numpy()
        lab = run.state.corrected_labels().numpy()
        true = run.splits.train.true_labels
        for c in range(10):
            sel = (lab == c) & ~np.isnan(loss)
            x = loss[sel]
            wrong = float((true[sel] != c).mean())
            flagged = float((run.state.clean_prob.numpy()[sel] < 0.5).mean())
            rows.append({"epoch": epoch, "class": c, "n": int(sel.sum()), "wrong": wrong, "dbic": float(dbic(x)),
                         "D": float(ashman(x)), "flagged": flagged})
        print(setting, epoch, "val", rec["val_acc"], flush=True)
    out[setting] = rows
    for e in sorted({r["epoch"] for r in rows}):
        rs = [r for r in rows if r["epoch"] == e]
        cells = (f"c{r['class']}:w{r['wrong']:.2f}/bic{r['dbic']:.3f}/D{r['D']:.1f}/f{r['flagged']:.2f}" for r in rs)
        print(setting, "epoch", e, " ".join(cells), flush=True)
here = os.path.dirname(os.path.abspath(__file__))
json.dump(out, open(os.path.join(here, "bimodality-first-fit.json"), "w"), indent=1)
