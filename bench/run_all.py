"""`make bench`: run every benchmark row, print one markdown table, write it to bench/results/<machine>.md.

    python -m bench.run_all            # the full run (about 19 minutes on 2 CPU cores)
    python -m bench.run_all --quick    # small models and few repeats (about 2 minutes)
    python -m bench.run_all --only lora_step_tiny --only caption_throughput
    python -m bench.run_all --list     # the row ids
    python -m bench.run_all --only label_order --only camera_robust   # the training experiments, on demand only
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .common import Row, file_name, format_table, machine_description

RESULTS = Path(__file__).resolve().parent / "results"
# rows that train adapters for many minutes (seed_blocks experiments): run only when named with --only
ON_DEMAND = ("label_order", "camera_robust")


def all_rows() -> dict[str, Callable[[bool], list[Row]]]:
    """Row id -> function(quick) returning its rows, in table order."""
    from . import (
        camera_robust,
        label_order,
        rows_caption,
        rows_data,
        rows_infer,
        rows_lora,
        rows_memory,
        rows_onnx,
        rows_train,
    )

    rows: dict[str, Callable[[bool], list[Row]]] = {}
    for module in (rows_lora, rows_train, rows_infer, rows_caption, rows_onnx, rows_data, rows_memory, label_order,
                   camera_robust):
        rows.update(module.ROWS)
    return rows


def run(names: list[str], quick: bool, log=sys.stderr) -> tuple[list[Row], list[str]]:
    """Run the named rows (all when empty); returns the rows and the failures (never raises for one row)."""
    table = all_rows()
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; known: {', '.join(table)}")
    rows: list[Row] = []
    failures: list[str] = []
    for name in names or [n for n in table if n not in ON_DEMAND]:
        began = time.perf_counter()
        print(f"[bench] {name} ...", file=log, flush=True)
        try:
            produced = table[name](quick)
        except Exception as error:  # noqa: BLE001 - one failing row must not lose the others
            traceback.print_exc(file=log)
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        rows.extend(produced)
        for r in produced:
            print(f"[bench]   {r.row}: {r.ratio:.3f}x ({r.ours:.4g} vs {r.baseline:.4g} {r.unit})",
                  file=log, flush=True)
        print(f"[bench] {name} took {time.perf_counter() - began:.0f} s", file=log, flush=True)
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small models, few repeats")
    parser.add_argument("--only", action="append", default=[], metavar="ROW", help="run only this row (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the row ids and exit")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: with 2 threads on a busy 2-core machine, OpenMP "
                             "barriers make timings swing tenfold; 0: torch's own choice)")
    parser.add_argument("--out", default=None, help="markdown file to write (default: bench/results/<machine>.md)")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(all_rows()))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    rows, failures = run(args.only, args.quick)
    machine = machine_description()
    mode = "quick" if args.quick else "full"
    text = format_table(rows, machine, title=f"blip-lora benchmarks ({mode} run)")
    text += f"\nTotal time {time.perf_counter() - began:.0f} s.\n"
    if failures:
        text += "\nFailed rows:\n\n" + "".join(f"- {f}\n" for f in failures)
    print(text)
    suffix = "-quick" if args.quick else ""
    out = Path(args.out) if args.out else RESULTS / f"{file_name(machine)}{suffix}.md"
    if not args.only or args.out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"[bench] wrote {out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
