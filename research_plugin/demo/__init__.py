"""The embedded default: a tiny policy with a local tokenizer, its format warm-up, the bundled questions as
recipe-ready data, and ``research-plugin demo``."""
