"""`python -m core <command>`: one argparse tree; each area of the core registers its own commands."""
from __future__ import annotations

import argparse
import importlib
import os
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
    # Listed for --help; main() hands `serve ...` to launch.py untouched, so its options are launch.py's.
    subparsers.add_parser("serve", help="the app: the same as python launch.py (--workspace, --host, --port, ...)")
    return parser


def _serve(launch_args: list[str]) -> int:
    """Replace this process with launch.py: the core never imports the UI."""
    from core.workspace import REPO_ROOT

    os.execv(sys.executable, [sys.executable, str(REPO_ROOT / "launch.py"), *launch_args])


def add_workspace_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None, help="workspace folder (default data/workspace)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WorkbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
