"""Cost of distillers relative to the student's own training step (forward + backward).

For each known distiller and a seeded sample of random valid chains, times the distiller's forward +
backward (student knowledge as a leaf with grad, teacher knowledge precomputed as it comes from the
teacher-output cache, aligner included) and divides it by the time of one plain student step (forward,
cross-entropy, backward) on the same batch. Default pair: Fashion-MNIST shape (1, 28, 28), batch 128,
teacher ``resnet8``, student ``cnn_tiny``.

Run: ``python -m benchmarks.spaces_cost [--chains 200] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from spaces import (
    CALIBRATIONS,
    DISTANCES,
    KNOWLEDGE,
    KNOWN_DISTILLERS,
    TEMPERATURES,
    TRANSFORMS,
    WEIGHTS,
    DistillerSpec,
    build_distiller,
)
from trainers import KnowledgeExtractor, create_model


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _random_specs(n: int, seed: int) -> list[DistillerSpec]:
    rng = random.Random(seed)
    specs = []
    while len(specs) < n:
        knowledge = rng.choice(KNOWLEDGE)
        distance = rng.choice([d for d in DISTANCES if knowledge == "logits" or d != "hard"])
        ops = tuple(rng.choice(list(TRANSFORMS)) for _ in range(3))
        specs.append(
            DistillerSpec(
                knowledge,
                ops,
                distance,
                rng.choice(list(CALIBRATIONS)),  # type: ignore[arg-type]
                rng.choice(WEIGHTS),
                rng.choice(TEMPERATURES),
            )
        )
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet8")
    parser.add_argument("--student", default="cnn_tiny")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--input", type=int, nargs=3, default=(1, 28, 28), metavar=("C", "H", "W"))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--chains", type=int, default=200, help="random valid chains to time")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    in_ch = args.input[0]
    teacher = KnowledgeExtractor(
        create_model(args.teacher, num_classes=args.classes, in_channels=in_ch)
    ).eval()
    student = KnowledgeExtractor(
        create_model(args.student, num_classes=args.classes, in_channels=in_ch)
    ).train()
    s_shapes, t_shapes = student.shapes(tuple(args.input)), teacher.shapes(tuple(args.input))
    x = torch.randn(args.batch, *args.input)
    y = torch.randint(0, args.classes, (args.batch,))
    with torch.no_grad():
        t_know = teacher(x)
    s_know = {k: v.detach() for k, v in student(x).items()}

    def student_step() -> None:
        student.zero_grad(set_to_none=True)
        F.cross_entropy(student(x)["logits"], y).backward()

    base = _median_time(student_step, args.repeats)
    print(
        f"student step ({args.student}, batch {args.batch}, {torch.get_num_threads()} threads): "
        f"{base * 1e3:.2f} ms; teacher {args.teacher}; shapes student {s_shapes} teacher {t_shapes}"
    )

    def cost(spec: DistillerSpec) -> tuple[float, bool]:
        k = spec.knowledge
        distiller = build_distiller(spec, s_shapes[k], t_shapes[k]).train()
        f_s = s_know[k].clone().requires_grad_(True)
        finite = True

        def step() -> None:
            nonlocal finite
            distiller.zero_grad(set_to_none=True)
            loss, _ = distiller(
                f_s, t_know[k], logits_s=s_know["logits"], logits_t=t_know["logits"], labels=y
            )
            loss.backward()
            finite = finite and bool(torch.isfinite(loss))

        return _median_time(step, args.repeats) / base, finite

    print(f"\n{'distiller':<10} {'knowledge':<10} {'% of step':>10}  formula")
    for name, spec in sorted(KNOWN_DISTILLERS.items()):
        rel, _ = cost(spec)
        print(f"{name:<10} {spec.knowledge:<10} {100 * rel:>9.1f}%  {spec.formula()}")

    rows = []
    for spec in _random_specs(args.chains, args.seed):
        rel, finite = cost(spec)
        rows.append((rel, finite, spec))
    rows.sort(key=lambda r: r[0])
    rels = [r[0] for r in rows]
    q = statistics.quantiles(rels, n=10)
    print(
        f"\n{len(rows)} random valid chains (seed {args.seed}): median {100 * statistics.median(rels):.1f}%, "
        f"p90 {100 * q[-1]:.1f}%, worst {100 * rels[-1]:.1f}% of a student step; "
        f"{sum(not r[1] for r in rows)} gave a non-finite loss on this batch"
    )
    for knowledge in KNOWLEDGE:
        sub = [r[0] for r in rows if r[2].knowledge == knowledge]
        if sub:
            print(
                f"  {knowledge:<10} n={len(sub):<4} median {100 * statistics.median(sub):.1f}%  "
                f"worst {100 * max(sub):.1f}%"
            )
    print("worst chains:")
    for rel, _, spec in rows[-5:][::-1]:
        print(f"  {100 * rel:>7.1f}%  [{spec.knowledge}] {spec.formula()}")


if __name__ == "__main__":
    main()
