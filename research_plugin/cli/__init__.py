"""``research-plugin`` command line.

One module per command, each with its flags (``register``, which adds its subparser) beside what it runs
(``run``, which returns the exit status); a new command is a module and its name in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib

COMMANDS = (
    "doctor", "recipes", "openrlhf_agent_path", "policy", "search", "demo", "serve", "index", "prepare", "eval", "plot",
    "guard",
)  # fmt: skip
"""The command modules, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="research-plugin", description="research_plugin's command line")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
