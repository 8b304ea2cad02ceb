"""``research-plugin eval``: a search policy on prepared benchmark files, scored the way the papers report it.

Modules: :mod:`.data` (prepared parquet rows), :mod:`.policy` (an OpenAI-compatible completions endpoint or a local
HF model behind verl's generate protocol), :mod:`.rollout` (the training agent loop through verl's own workers),
:mod:`.metrics` (per-row scores, per-benchmark aggregation, the papers' table), :mod:`.judge` (LLM-as-judge with a
disk cache), :mod:`.store` (the resumable per-row file), :mod:`.runner` (the whole run).
"""
