from __future__ import annotations

import json
from pathlib import Path

import pytest

MINI_CORPUS = [
    ("Orvell Glassworks", "The Orvell Glassworks is a glass factory in Tamsk. It was founded in 1871 by Ilsa Marrow."),
    ("Ilsa Marrow", "Ilsa Marrow was an industrialist born in the harbour town of Keddle in 1840."),
    ("Keddle", "Keddle is a harbour town on the Quessa River, known for its fish market and lighthouse."),
    ("Tamsk", "Tamsk is the second largest city of Varenholt and a centre of glassmaking."),
    ("Quessa River", "The Quessa River is 412 kilometres long and flows into the Amber Sea."),
    ("Varenholt", "Varenholt is a kingdom whose capital is Lune. Its currency is the varen."),
]


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "mini.jsonl"
    with path.open("w") as f:
        for i, (title, text) in enumerate(MINI_CORPUS):
            f.write(json.dumps({"id": f"m{i}", "contents": f'"{title}"\n{text}'}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from research_plugin.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


@pytest.fixture(scope="session")
def verl_config():
    """Compose verl 0.9.1's own ``ppo_trainer`` config with overrides (what ``main_ppo`` does)."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")

    def make(overrides: list[str]):
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            return compose(config_name="ppo_trainer", overrides=overrides)

    return make
