"""Small labelled corpora shared by the retrieval tests, and how they become ``Passage``s or a jsonl corpus file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from research_plugin.retrieval import Passage

# 26 one-sentence encyclopedia entries on unrelated topics: each one is the best match for its own distinctive words.
MINI_CORPUS = [
    ("Orvell Glassworks", "The Orvell Glassworks is a glass factory in Tamsk. It was founded in 1871 by Ilsa Marrow."),
    ("Ilsa Marrow", "Ilsa Marrow was an industrialist born in the harbour town of Keddle in 1840."),
    ("Keddle", "Keddle is a harbour town on the Quessa River, known for its fish market and lighthouse."),
    ("Tamsk", "Tamsk is the second largest city of Varenholt and a centre of glassmaking."),
    ("Quessa River", "The Quessa River is 412 kilometres long and flows into the Amber Sea."),
    ("Varenholt", "Varenholt is a kingdom whose capital is Lune. Its currency is the varen."),
]
"""A six-passage two-hop world (titles, texts) written by the ``mini_corpus`` fixture."""

TOPICS = [
    ("Volcano", "A volcano is a rupture in the crust through which lava, ash and gases escape from a magma chamber."),
    ("Honeybee", "Honeybees live in hives, gather nectar from flowers and store honey in wax combs."),
    ("Piano", "The piano is a keyboard instrument whose felt hammers strike strings when keys are pressed."),
    ("Glacier", "A glacier is a persistent body of dense ice that slowly flows downhill under its own weight."),
    ("Chess", "Chess is a board game for two players who move kings, queens, rooks, bishops, knights and pawns."),
    ("Photosynthesis", "Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose and oxygen."),
    ("Lighthouse", "A lighthouse is a tower with a bright lamp that guides ships away from rocks at night."),
    ("Sourdough", "Sourdough bread is leavened by a starter culture of wild yeast and lactobacilli."),
    ("Tornado", "A tornado is a violently rotating column of air touching both a thunderstorm cloud and the ground."),
    ("Penguin", "Penguins are flightless seabirds of the southern hemisphere that swim with flipper wings."),
    ("Saturn", "Saturn is the sixth planet from the Sun, a gas giant famous for its prominent ring system."),
    ("Origami", "Origami is the Japanese art of folding paper sheets into sculptures without cutting or glue."),
    ("Espresso", "Espresso is concentrated coffee brewed by forcing pressurised hot water through ground beans."),
    ("Coral reef", "Coral reefs are underwater ecosystems built from calcium carbonate skeletons of tiny polyps."),
    ("Bicycle", "A bicycle is a pedal driven vehicle with two wheels, a chain drive and handlebars for steering."),
    ("Vaccine", "A vaccine trains the immune system to recognise a pathogen by presenting a harmless antigen."),
    ("Marathon", "The marathon is a long distance footrace of about forty two kilometres run on roads."),
    ("Telescope", "A telescope gathers light with lenses or mirrors to magnify distant stars and galaxies."),
    ("Cheddar", "Cheddar is a hard cow milk cheese that originated in the English village of Cheddar in Somerset."),
    ("Earthquake", "An earthquake is sudden shaking of the ground caused by slipping tectonic plates along a fault."),
    ("Violin", "The violin is a bowed string instrument with four strings tuned in perfect fifths."),
    ("Pyramid", "The pyramids of Giza are ancient Egyptian tombs built from limestone blocks for pharaohs."),
    ("Octopus", "An octopus is a soft bodied cephalopod with eight arms lined with suckers and three hearts."),
    ("Bamboo", "Bamboo is a fast growing grass with hollow woody stems used for scaffolding and furniture."),
    ("Compass", "A compass has a magnetised needle that aligns with the magnetic field and points north."),
    ("Tsunami", "A tsunami is a series of enormous ocean waves usually triggered by an undersea earthquake."),
]

Topics = Sequence[tuple[str, str]]


def to_passages(topics: Topics = TOPICS, *, id_format: str = "doc{}") -> list[Passage]:
    """``topics`` as ``Passage``s, the i-th with id ``id_format.format(i)``."""
    return [Passage(id_format.format(i), title, text) for i, (title, text) in enumerate(topics)]


def write_corpus(path: Path, topics: Topics = TOPICS, *, id_format: str = "doc{}") -> Path:
    """Write ``topics`` to ``path`` as a wiki-18 style jsonl corpus (``{"id", "contents": '"title"\\ntext'}``)."""
    with path.open("w") as f:
        for i, (title, text) in enumerate(topics):
            f.write(json.dumps({"id": id_format.format(i), "contents": f'"{title}"\n{text}'}) + "\n")
    return path
