"""Proxy runs of distillers over several seeds and thread counts, on the setting of a stored study.

Measures how much a proxy verdict depends on the seed and on torch's intra-op thread count (float sums in
another order). Rows go to ``--out`` as JSON lines (appended)::

    python -m benchmarks.proxy_seeds \
        --study-db benchmarks/results/table3v3-fashion_mnist-10pct-cnn_tiny-rand-kd.db \
        --methods kd,ce --seeds 0,1,2,3,4 --threads 1,2 --out benchmarks/results/proxy-seeds.jsonl
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time

import torch

from spaces import KNOWN_DISTILLERS
from study.config import StudyConfig
from study.worker import CONFIG_ATTR
from trainers import Rejected
from trainers.proxy import ProxyEvaluator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--study-db", required=True, help="SQLite file of a benchmark study (its kdzero_config is used)"
    )
    p.add_argument("--methods", default="kd,ce", help="known distiller names or ce (comma-separated)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="trial seeds (comma-separated)")
    p.add_argument("--threads", default="1", help="torch thread counts (comma-separated)")
    p.add_argument("--fraction", type=float, default=None, help="proxy fraction (default: the study's)")
    p.add_argument("--out", required=True, help="JSON lines file to append to")
    args = p.parse_args(argv)
    with sqlite3.connect(f"file:{args.study_db}?mode=ro", uri=True) as con:
        raw = con.execute(
            "select value_json from study_user_attributes where study_id = 1 and key = ?", (CONFIG_ATTR,)
        ).fetchone()[0]
    value = json.loads(raw)
    cfg = StudyConfig.from_dict(json.loads(value) if isinstance(value, str) else value)
    evaluator = ProxyEvaluator(cfg.experiment, device="cpu")
    fraction = args.fraction or cfg.experiment.proxy.fraction
    with open(args.out, "a") as out:
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for name in args.methods.split(","):
                spec = None if name == "ce" else KNOWN_DISTILLERS[name]
                for seed in (int(s) for s in args.seeds.split(",")):
                    t0 = time.process_time()
                    row: dict = {"method": name, "seed": seed, "threads": threads, "fraction": fraction}
                    try:
                        fit = evaluator.evaluate(spec, seed=seed, fraction=fraction)
                        row.update(acc=fit.accuracy, curve=[list(c) for c in fit.curve])
                    except Rejected as exc:
                        row["rejected"] = f"{exc.reason}: {exc.detail}"
                    row["cpu_s"] = round(time.process_time() - t0, 2)
                    print(json.dumps(row), flush=True)
                    out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
