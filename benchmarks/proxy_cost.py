"""Cost of one proxy trial on the default pair: with / without the teacher-output cache, vs plain CE training.

Measures, in one process:
  (a) wall time of a proxy trial (rejection check + proxy run + fitness) with the teacher-output cache,
      with the teacher live, and the training time of plain CE training of the student for the same steps;
  (b) the rejection check as a fraction of a cached proxy trial;
  (c) peak resident memory of the worker (``resource.getrusage``) after each phase.

Run from the repository root::

    python -m benchmarks.proxy_cost --threads 2 --out proxy_cost.json

``--teacher random`` times with an untrained teacher (same architecture and cost; no teacher training needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainers.config import ExperimentConfig  # noqa: E402


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_evaluators(exp: ExperimentConfig, teacher_source: str, device: str, cache_dir: Path):
    """A cached and a live :class:`ProxyEvaluator` sharing data and teacher."""
    from trainers.data import load_dataset
    from trainers.models import create_model
    from trainers.output_cache import TeacherOutputCache
    from trainers.proxy import ProxyEvaluator

    splits = load_dataset(exp.dataset)
    if teacher_source == "cache":
        from trainers.teacher import get_teacher

        teacher, meta = get_teacher(
            exp.teacher, exp.dataset, exp.teacher_train, cache_dir=cache_dir, device=device, splits=splits
        )
        key = meta["hash"]
    else:
        torch.manual_seed(0)
        teacher = create_model(exp.teacher, num_classes=splits.num_classes, in_channels=splits.in_channels)
        key = f"random-{exp.teacher}"
    parts = dict(
        train=splits.train,
        val=splits.val,
        teacher=teacher,
        num_classes=splits.num_classes,
        device=device,
        input_shape=(splits.in_channels, splits.image_size, splits.image_size),
        augment=bool(splits.augment),
    )
    cache = TeacherOutputCache(cache_dir, TeacherOutputCache.make_key(key, exp.dataset))
    t0 = time.perf_counter()
    cached = ProxyEvaluator.from_parts(exp, cache=cache, **parts)
    build_s = time.perf_counter() - t0
    live = ProxyEvaluator.from_parts(exp, cache=None, **parts)
    return cached, live, build_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="ExperimentConfig JSON (default: ExperimentConfig() defaults)")
    parser.add_argument("--spec", default="kd", help="known distiller to time (default kd)")
    parser.add_argument(
        "--teacher",
        choices=("cache", "random"),
        default="cache",
        help="teacher from the teacher cache (trained if missing) or randomly initialised",
    )
    parser.add_argument("--cache-dir", default=".kdzero_cache", help="cache folder (default .kdzero_cache)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, help="proxy steps (default: the config's proxy length)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the fastest is kept")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from spaces import KNOWN_DISTILLERS

    exp = (
        ExperimentConfig.from_dict(json.loads(Path(args.config).read_text()))
        if args.config
        else ExperimentConfig()
    )
    if args.steps:
        exp = dataclasses.replace(exp, proxy=dataclasses.replace(exp.proxy, steps=args.steps))
    spec = KNOWN_DISTILLERS[args.spec]
    cached, live, build_s = build_evaluators(exp, args.teacher, args.device, Path(args.cache_dir))
    rss = {"setup": peak_rss_mib()}
    t0 = time.perf_counter()
    cached.check(spec)  # warm-up; builds the train-split cache of this knowledge kind outside the timings
    train_cache_s = time.perf_counter() - t0
    checks, trials, ces = [], [], []
    # Cached trial, CE run and check alternate, and the fastest of each is kept: the CPU is shared, so
    # sequential single measurements would mostly compare the load at two moments.
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        cached.check(spec)
        checks.append(time.perf_counter() - t0)
        trials.append(cached.evaluate(spec))
        rss["cached_trial"] = peak_rss_mib()
        ces.append(cached.evaluate(None))
        rss["ce_run"] = peak_rss_mib()
    f_live = live.evaluate(spec)
    rss["live_trial"] = peak_rss_mib()
    check_s = min(checks)
    f_cached = min(trials, key=lambda f: f.wall_s)
    f_ce = min(ces, key=lambda f: f.train_s)
    steps = f_cached.steps
    rows = [
        ("proxy trial, teacher-output cache", f_cached.wall_s, f_cached.train_s),
        ("proxy trial, live teacher", f_live.wall_s, f_live.train_s),
        ("plain CE student training", f_ce.wall_s, f_ce.train_s),
    ]
    figures = {
        "pair": f"{exp.dataset.name}: {exp.teacher} -> {exp.student}",
        "spec": args.spec,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "all_trial_cached_s": [f.wall_s for f in trials],
        "all_ce_train_s": [f.train_s for f in ces],
        "all_check_s": checks,
        "setup_and_val_cache_s": build_s,
        "train_cache_and_first_check_s": train_cache_s,
        "trial_cached_s": f_cached.wall_s,
        "trial_live_s": f_live.wall_s,
        "train_cached_s": f_cached.train_s,
        "train_live_s": f_live.train_s,
        "ce_train_s": f_ce.train_s,
        "ce_trial_s": f_ce.wall_s,
        "ratio_cached_trial_vs_ce_train": f_cached.wall_s / f_ce.train_s,
        "ratio_cached_train_vs_ce_train": f_cached.train_s / f_ce.train_s,
        "ratio_live_trial_vs_ce_train": f_live.wall_s / f_ce.train_s,
        "check_s": check_s,
        "check_fraction_of_trial": check_s / f_cached.wall_s,
        "peak_rss_mib": rss,
        "accuracy_cached": f_cached.accuracy,
    }
    print(f"{figures['pair']}, distiller {args.spec}, {steps} proxy steps, {figures['threads']} threads")
    print(f"{'run':38s} {'wall s':>8s} {'train s':>8s} {'x CE train':>10s}")
    for name, wall, train in rows:
        print(f"{name:38s} {wall:8.2f} {train:8.2f} {wall / f_ce.train_s:10.2f}")
    print(
        f"rejection check: {check_s:.3f} s = "
        f"{100 * figures['check_fraction_of_trial']:.2f}% of a cached trial"
    )
    print(
        f"setup + val cache: {build_s:.2f} s; "
        f"train cache + first check: {train_cache_s:.2f} s (once per study)"
    )
    print("peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
