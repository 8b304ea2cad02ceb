"""The papers' training runs and the embedded default, shipped with the package (``research-plugin recipes``).

- verl: Hydra configs for ``python -m verl.trainer.main_ppo --config-path DIR --config-name NAME`` (``DIR`` is
  :func:`recipes_dir`, what ``research-plugin recipes dir`` prints), plus the config group ``rollout_engine``
  (``+rollout_engine=vllm_cpu``);
- OpenRLHF: shell scripts that submit a Ray job, each beside the verl config of the same paper and run
  (``research_qwen2.5_7b_instruct.yaml`` and ``.sh``; ``launch.sh`` is shared by them).

Recipes are named by paper first (``research_``, ``r1_searcher_``, ``search_r1_``), so a listing groups them by
paper; they stay in one folder because Hydra reads a config group override (``+rollout_engine=vllm_cpu``) relative
to the folder of the config it is given.

Like torchtune's ``tune ls`` / ``tune cp``: :func:`list_recipes` names them, :func:`copy_recipe` copies one out for
editing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    name: str
    """``tiny_cpu_grpo``, ``r1_searcher_stage1.sh`` (OpenRLHF); config groups as ``rollout_engine/vllm_cpu``."""
    path: Path
    framework: str
    summary: str
    """The first line of its header comment."""


def recipes_dir() -> Path:
    return Path(__file__).resolve().parent


def _summary(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if line.startswith("#") and text and not text.startswith(("!", "@package")):
            return text
    return ""


def list_recipes() -> list[Recipe]:
    root = recipes_dir()
    found = [Recipe(p.stem, p, "verl", _summary(p)) for p in sorted(root.glob("*.yaml"))]
    found += [
        Recipe(f"{p.parent.name}/{p.stem}", p, "verl (config group)", _summary(p))
        for p in sorted(root.glob("*/*.yaml"))
    ]
    found += [Recipe(p.name, p, "OpenRLHF", _summary(p)) for p in root.glob("*.sh") if p.name != "launch.sh"]
    return sorted(found, key=lambda r: r.name)


def find_recipe(name: str) -> Recipe:
    for recipe in list_recipes():
        if name in (recipe.name, recipe.path.name, f"{recipe.name}{recipe.path.suffix}"):
            return recipe
    known = ", ".join(r.name for r in list_recipes())
    raise ValueError(f"no recipe named {name!r}; known: {known}")


def copy_recipe(name: str, dest: str | Path = ".") -> list[Path]:
    """Copy recipe ``name`` into the folder ``dest`` (or to the file ``dest``); an OpenRLHF script brings the
    ``launch.sh`` it sources. Returns the files written; an existing file is never overwritten."""
    recipe = find_recipe(name)
    dest = Path(dest)
    target = dest / recipe.path.name if dest.is_dir() or not dest.suffix else dest
    sources = [(recipe.path, target)]
    if recipe.framework == "OpenRLHF":
        sources.append((recipe.path.parent / "launch.sh", target.parent / "launch.sh"))
    written = []
    for src, dst in sources:
        if dst.exists():
            if src.name == "launch.sh" and dst.read_bytes() == src.read_bytes():
                continue
            raise FileExistsError(f"{dst} exists; remove it or copy elsewhere")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        written.append(dst)
    return written
