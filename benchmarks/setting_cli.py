"""Command-line options of the benchmarks that go back over one setting of a ``benchmarks.table`` run."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def setting_parser(prog: str, description: str, regime: str, what: str) -> argparse.ArgumentParser:
    """A parser with the run, its folder, the setting, seeds, threads, device, table options, --summary.

    Args:
        prog: The program name (``python -m benchmarks.<module>``).
        description: One line on what it does.
        regime: The default regime.
        what: What of the run it goes over (in ``--run``'s help).
    """
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--run", required=True, help=f"the table run whose {what}")
    p.add_argument("--out", default=str(RESULTS), help=f"results folder of the run (default {RESULTS})")
    p.add_argument("--regime", default=regime, help=f"regime of the setting (default {regime})")
    p.add_argument("--student", default="cnn_tiny", help="student of the setting (default cnn_tiny)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the table's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--table-args", default="", help="the table run's own options, e.g. '--quick --dataset digits'"
    )
    p.add_argument("--summary", action="store_true", help="report what has finished only; train nothing")
    return p


def parse_setting_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and check (``seeds``: a list of ints; ``threads`` >= 1); a bad value is refused naming it."""
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not args.seeds:
        p.error("--seeds: give at least one seed")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


def table_namespace(args: argparse.Namespace) -> tuple[argparse.Namespace | None, str | None]:
    """The table's own options of the run (``--table-args``), or an error naming a regime it does not have."""
    from benchmarks import table

    if args.regime not in table.REGIMES:
        return None, f"--regime must be one of {list(table.REGIMES)}, got {args.regime!r}"
    return table.parse_args(["--run", args.run, "--out", args.out, *shlex.split(args.table_args)]), None
