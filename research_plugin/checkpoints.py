"""Where a run's model is: a Hugging Face model folder, or the newest Hugging Face copy in a verl checkpoint folder
(what ``research-plugin eval`` and ``demo`` take as ``--model``, and what a run's summary points to)."""

from __future__ import annotations

from pathlib import Path


def latest_hf_checkpoint(root: str | Path) -> Path | None:
    """The newest ``global_step_N/actor/huggingface`` under a verl checkpoint folder, if it saved one."""
    found = sorted(
        Path(root).glob("global_step_*/actor/huggingface"), key=lambda p: int(p.parts[-3].rsplit("_", 1)[-1])
    )
    return found[-1] if found and (found[-1] / "config.json").is_file() else None


def resolve_model_dir(path: str | Path) -> Path:
    """A Hugging Face model folder from ``path``: the folder itself, or the newest Hugging Face copy in a verl
    checkpoint folder (``trainer.default_local_dir`` of a run whose ``checkpoint.save_contents`` has
    ``hf_model``, as the embedded default's has)."""
    p = Path(path)
    if (p / "config.json").is_file():
        return p
    hf = latest_hf_checkpoint(p)
    if hf is None:
        raise ValueError(
            f"{path} is neither a Hugging Face model folder (config.json) nor a verl checkpoint folder with a "
            "Hugging Face copy (global_step_N/actor/huggingface; save it with "
            "actor_rollout_ref.actor.checkpoint.save_contents including hf_model)"
        )
    return hf
