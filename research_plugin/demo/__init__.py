"""The embedded default: a generated fact world, a tiny policy with a local tokenizer and its warm-up, the bundled
questions as recipe-ready data, and ``research-plugin demo``."""
