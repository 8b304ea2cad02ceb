"""``python bench/retrieval``: the retrieval-server benchmark (see the package's docstring)."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
for path in (BENCH.parent, BENCH):  # the checkout (research_plugin without `pip install -e .`), and this package
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from retrieval.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
