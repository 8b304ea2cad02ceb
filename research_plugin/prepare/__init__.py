"""``research-plugin prepare``: published QA datasets → verl parquet rows for the search agent.

- :mod:`.readers`: containers (jsonl, JSON array, csv/tsv, parquet), record by record with locations;
- :mod:`.formats`: the published record formats (FlashRAG, MuSiQue, HotpotQA, 2Wiki, R1-Searcher, plain QA);
- :mod:`.selection`: eval-set dedupe, seeded sampling, weighted mixing;
- :mod:`.rows`: verl rows (prompts from :mod:`research_plugin.core.prompts`) and the atomic parquet write;
- :mod:`.pipeline`: the command itself.
"""

from .pipeline import PrepareError, Source, prepare

__all__ = ["PrepareError", "Source", "prepare"]
