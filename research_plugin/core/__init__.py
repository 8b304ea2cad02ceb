"""What search-RL means, independent of any training framework: the tag dialects, the prompts, one search step
(find the query, search within a time bound, build the result block, count), the format check, the answer metrics,
the papers' rewards and the guard's collapse rules. Nothing here imports verl or OpenRLHF; both adapters
(:mod:`research_plugin.verl`, :mod:`research_plugin.openrlhf`) are thin layers over it."""
