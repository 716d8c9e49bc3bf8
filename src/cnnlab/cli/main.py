"""The ``cnnlab`` command: argument parsing only; every command calls the library.

Each command lives in its own module under ``cnnlab.cli`` with two functions:
``add_parser(subparsers)`` declares the options and ``run(args) -> int``
does the work. Heavy libraries (torch) are imported inside ``run`` so that
``cnnlab --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cnnlab import __version__
from cnnlab._util import CnnlabError

COMMAND_MODULES = [
    "cnnlab.cli.train",
    "cnnlab.cli.evaluate",
    "cnnlab.cli.augment",
    "cnnlab.cli.inspect",
    "cnnlab.cli.diagnose",
    "cnnlab.cli.lab",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="A laboratory for convolutional networks: train, inspect and diagnose CNNs, "
        "and run studies that answer the classic questions with measured evidence.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except CnnlabError as error:
        print(f"cnnlab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cnnlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
