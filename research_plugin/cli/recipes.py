"""``research-plugin recipes``: list the shipped recipes, print their folder, or copy one out for editing."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "recipes",
        help="list the shipped recipes, print their folder, or copy one out",
        description="ls: the recipes shipped with the package; dir: their folder (verl's --config-path); "
        "cp NAME [DEST]: copy one for editing (an OpenRLHF script with the launch.sh it sources).",
    )
    p.add_argument("action", choices=["ls", "dir", "cp"])
    p.add_argument("name", nargs="?", help="for cp: a recipe name from `recipes ls`")
    p.add_argument("dest", nargs="?", default=".", help="for cp: a folder or a file name (default: .)")
    p.set_defaults(func=run)


def run(args) -> int:
    """List the shipped recipes, print their folder, or copy one out for editing."""
    from ..recipes import copy_recipe, list_recipes, recipes_dir

    if args.action == "dir":
        print(recipes_dir())
        return 0
    if args.action == "ls":
        recipes = list_recipes()
        width = max(len(r.name) for r in recipes)
        for r in recipes:
            print(f"{r.name:{width}}  {r.framework:19}  {r.summary}")
        print(
            '\nverl: python -m verl.trainer.main_ppo --config-path "$(research-plugin recipes dir)" --config-name NAME'
        )
        print('(a config group: add +GROUP=NAME); OpenRLHF: bash "$(research-plugin recipes dir)/NAME" (NAME.sh)')
        return 0
    if not args.name:
        print("recipes cp: name a recipe (research-plugin recipes ls)", file=sys.stderr)
        return 2
    try:
        written = copy_recipe(args.name, args.dest)
    except (ValueError, FileExistsError) as e:
        print(f"recipes cp: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if written and written[0].suffix == ".yaml":
        folder = written[0].parent.resolve()
        print(f"run: python -m verl.trainer.main_ppo --config-path {folder} --config-name {written[0].stem}")
    return 0
