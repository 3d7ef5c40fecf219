"""``python -m bench``: run every benchmark and write bench/RESULTS.md (figures as ratios against baselines
measured in the same run). Needs root and the local cluster (`cumulus local up`, its supervisor running) for
P1/P2/P4/P7/P8; `--no-cluster` skips those. `--quick` runs fewer rounds. P7's burst size: `--p7-jobs N` (default
$CUMULUS_BENCH_P7_JOBS or 100). Besides the table, RESULTS.md gets P1's per-phase tables (where the time goes)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import actor_call  # noqa: E402
import control_plane  # noqa: E402
import grpc_throughput  # noqa: E402


def machine() -> str:
    cpus = os.cpu_count()
    try:
        memory = int(open("/proc/meminfo").read().split()[1]) // 1024 // 1024
    except (OSError, ValueError):
        memory = 0
    return f"{platform.platform()}, {cpus} CPUs, {memory} GiB RAM, Python {platform.python_version()}"


def fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def ratio_cell(row: dict) -> str:
    """The ratio, with the spread of the per-run ratios where the row has it (P4)."""
    text = f"{row['ratio']:.2f}x"
    if "ratio_spread" in row:
        lo, mid, hi = row["ratio_spread"]
        text += f" (per run: min {lo:.2f} / median {mid:.2f} / max {hi:.2f}, {len(row['run_ratios'])} runs)"
    return text


def goal_met(row: dict) -> bool | None:
    """Whether the row meets its goal: "<= 1.1x" / ">= 0.8x" compare the ratio; "<= 100 KB/job", ">= 1000/s" or
    "<= 10 ms" compare the Cumulus figure itself; None for a figure that is only reported."""
    if row["goal"] == "report":
        return None
    op, _, target = row["goal"].partition(" ")
    number = float(target.split()[0].rstrip("x/s").replace(",", ""))
    value = row["ratio"] if target.endswith("x") else row["cumulus"]
    return value <= number if op == "<=" else value >= number


def _met(met: bool | None) -> str:
    return "-" if met is None else "yes" if met else "**no**"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-cluster", action="store_true", help="skip P1/P2/P4/P7 (they need the local cluster)")
    parser.add_argument("--p7-jobs", type=int, default=int(os.environ.get("CUMULUS_BENCH_P7_JOBS", "100")),
                        help="jobs per P7 burst (default $CUMULUS_BENCH_P7_JOBS or 100)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows: list[dict] = []
    rows.append(actor_call.main(["--calls", "5000" if args.quick else "20000"]))
    rows += control_plane.main(["--quick"] if args.quick else [])
    rows += grpc_throughput.main(["--jobs", "500", "--rounds", "1"] if args.quick else ["--jobs", "1500"])
    import dashboard

    rows += dashboard.main(["--jobs", "2000", "--rounds", "10"] if args.quick else [])
    if not args.no_cluster:
        import lifecycle

        rows += lifecycle.main(["--runs", "3" if args.quick else "7"])
        import warm_start

        rows += warm_start.main(["--runs", "3" if args.quick else "7"])
        import log_relay

        rows += log_relay.main(["--runs", "3", "--lines", "5000"] if args.quick else ["--runs", "5"])
        import instance_calls

        rows += instance_calls.main(["--calls", "200", "--total", "1000"] if args.quick else [])
        import burst

        rows += burst.main(["--jobs", str(args.p7_jobs), "--runs", "1" if args.quick else "3"])
    lines = [
        "# Benchmark results",
        "",
        f"`python -m bench{' --quick' if args.quick else ''}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"took {time.monotonic() - started:.0f} s. Machine: {machine()}.",
        "",
        "Every figure is a median; ratios are Cumulus / baseline measured in the same run (see bench/README.md).",
        "",
        "| metric | Cumulus | baseline | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        unit = row.get("unit", "s")
        lines.append(f"| {row['metric']} | {fmt(row['cumulus'])} {unit} | {fmt(row['baseline'])} {unit} | "
                     f"{ratio_cell(row)} | {row['goal']} | {_met(goal_met(row))} |")
    notes = [f"- {row['metric']}: baseline = {row['baseline_name']}" + (
        f"; {row['warm_runs']} of {row['runs']} timed runs took a warm service" if row.get("warm_known") else "")
        for row in rows if row.get("baseline_name")]
    if notes:
        lines += ["", "Baselines (bench/README.md has the details):", "", *notes]
    phase_rows = [row for row in rows if row.get("phases")]
    if phase_rows:
        import phases

        lines += ["", "## Where P1's time goes", "",
                  "Per phase of the Cumulus side, from each timed job's status history (`phases.py`).", ""]
        for row in phase_rows:
            lines += phases.markdown(row["phases_title"], row["phases"])
    out = ROOT / "bench" / "RESULTS.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
