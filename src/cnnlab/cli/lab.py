"""``cnnlab lab``: run the studies and write the report."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import Any

PROFILE_CHOICES = ("cpu", "full", "smoke")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lab",
        help="run the studies and write a report (HTML, Markdown, JSON)",
        description="Run every study (or the named ones) and write lab-report/index.html, "
        "report.md and results.json. Finished studies are reused by the next run with the "
        "same profile and seed, so an interrupted lab picks up where it stopped.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="studies to run (default: all; see --list)")
    parser.add_argument("--list", action="store_true",
                        help="list the studies with their budgets and exit")
    parser.add_argument("--profile", choices=PROFILE_CHOICES, default=None,
                        help="study sizes: cpu (about an hour on two cores; the default "
                        "without a GPU), full (usual recipe sizes; the default with CUDA), "
                        "smoke (seconds, for checking that everything runs)")
    parser.add_argument("--out", default="lab-report", metavar="DIR",
                        help="report folder (default: lab-report)")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore finished studies and runs from earlier labs; run all again")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--data-root", default=None, metavar="PATH",
                        help="folder holding the datasets (default: $CNNLAB_DATA, then the cache)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress lines or bars; print only the report paths and failures")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cnnlab.lab.runner import list_studies, run_lab, select_studies

    console = Console(highlight=False)
    if args.list:
        _print_list(console, list_studies())
        return 0

    select_studies(args.names)  # unknown names fail before any work starts
    package_logger = logging.getLogger("cnnlab")
    level = package_logger.level
    if args.quiet and not getattr(args, "verbose", False):
        package_logger.setLevel(logging.WARNING)
    try:
        lab = run_lab(
            names=args.names or None,
            out_dir=args.out,
            profile=args.profile,
            fresh=args.fresh,
            seed=args.seed,
            data_root=args.data_root,
            progress=not args.quiet,
            device=args.device,
            command=_command_line(args),
        )
    finally:
        package_logger.setLevel(level)
    _print_summary(console, lab, quiet=args.quiet)
    return lab.exit_code


def _command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it, rebuilt from the parsed options."""
    words = ["cnnlab", "lab", *args.names]
    if args.profile:
        words += ["--profile", args.profile]
    if args.out != "lab-report":
        words += ["--out", args.out]
    if args.fresh:
        words.append("--fresh")
    if args.seed != 0:
        words += ["--seed", str(args.seed)]
    if args.data_root:
        words += ["--data-root", args.data_root]
    if args.device != "auto":
        words += ["--device", args.device]
    if args.quiet:
        words.append("--quiet")
    return shlex.join(words)


def _print_list(console: Any, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from cnnlab.lab.runner import default_profile
    from cnnlab.report.render import format_seconds

    default = default_profile()
    table = Table(title=f"cnnlab studies (default profile here: {default})", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("title")
    for profile in PROFILE_CHOICES:
        table.add_column(f"{profile}{' *' if profile == default else ''}", justify="right",
                         no_wrap=True)
    totals = dict.fromkeys(PROFILE_CHOICES, 0.0)
    for row in rows:
        budgets = row["budget_seconds"]
        for profile in PROFILE_CHOICES:
            totals[profile] += budgets.get(profile) or 0
        table.add_row(row["name"], row["title"],
                      *(format_seconds(budgets.get(profile)) for profile in PROFILE_CHOICES))
    table.add_section()
    table.add_row("all", f"{len(rows)} {'study' if len(rows) == 1 else 'studies'}",
                  *(format_seconds(totals[profile]) for profile in PROFILE_CHOICES))
    console.print(table)


def _print_summary(console: Any, lab: Any, *, quiet: bool) -> None:
    from rich.table import Table

    from cnnlab.report.render import format_seconds

    if not quiet:
        table = Table(title="cnnlab lab", title_justify="left")
        for column, justify in (("study", "left"), ("status", "left"),
                                ("wall time", "right"), ("budget", "right")):
            table.add_column(column, justify=justify, no_wrap=True)
        for entry in lab.studies:
            status = "reused" if entry.cached else entry.status
            if entry.over_budget and not entry.cached:
                status += " (over budget)"
            table.add_row(entry.name, status, format_seconds(entry.wall_seconds),
                          format_seconds(entry.budget_seconds))
        console.print(table)
    for entry in lab.failed:
        first_line = entry.error.splitlines()[0] if entry.error else "(no message)"
        print(f"cnnlab lab: study {entry.name} failed: {first_line} (details in the report)",
              file=sys.stderr)
    for name, path in lab.files.items():
        console.print(f"{name:>13}: {path}", markup=False, soft_wrap=True)
