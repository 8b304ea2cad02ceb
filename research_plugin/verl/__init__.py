"""verl glue: what ``import verl`` loads (:mod:`.plugin`), the ``search_agent`` agent loop over the core search
step, the CPU platform, the ``hf`` rollout backend, per-step search metrics, and verl's vLLM rollout on vLLM's CPU
build. Nothing is imported here: :mod:`.plugin` is the entry point."""
