"""`python -m core <command>`: one argparse tree; each area of the core registers its own commands."""
from __future__ import annotations

import argparse
import importlib
import sys

from core.errors import WorkbenchError

# Each module exposes `register(subparsers)` and sets `func(args) -> int | None` on its parsers.
COMMAND_MODULES = [
    "core.models.commands",
    "core.data.commands",
    "core.engine_commands",
    "core.reproduce",
    "core.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="NoteLLM-2 workbench")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def add_workspace_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None, help="workspace folder (default data/workspace)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WorkbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
