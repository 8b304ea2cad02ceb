#!/usr/bin/env python3
"""Generate ``patches/*.patch``: research_plugin's search-RL code as a ``git format-patch`` series for verl 0.9.1.

    python patches/generate.py            # rewrite the *.patch files in patches/
    python patches/generate.py --check    # exit 1 if the committed patches differ from a fresh generation
    python patches/generate.py --out DIR  # write the series to DIR instead

The series is built from the package's current modules, so plugin and patches cannot drift:

- plugin modules (:data:`MODULES`) move to the places verl keeps such code; their ``research_plugin`` imports are
  rewritten to the new module paths (relative where the target stays in the same package, else absolute, in
  verl's isort order), references in docstrings likewise, and verl's Apache-2.0 header is put on top;
- in a registry module (:data:`REGISTRIES`) the lazy backend factories that import a module not shipped upstream are
  dropped, and a shipped backend with dependencies verl does not have is imported lazily, so they stay optional;
- ``templates/`` holds what exists only upstream (package ``__init__`` files, the two-hop corpus locator, the example,
  the docs page, the tests); ``{{placeholders}}`` in its Markdown are tables generated from the plugin's code;
- the recipes become example configs (:func:`example_config`), the bundled data the example's data;
- verl's own registration replaces the plugin's entry point: the agent loop module is imported by
  ``verl/experimental/agent_loop/__init__.py`` (its ``@register`` then runs), the reward is named by path.

Each concern is one commit in a scratch git repo whose base commit holds verl 0.9.1's copies of the files the
series modifies; identities, dates and git's configuration are fixed, so the output is byte-identical for
identical inputs. Anything that would leave a plugin reference behind stops the generator with the rule to fix.
"""

from __future__ import annotations

import argparse
import ast
import filecmp
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEMPLATES = HERE / "templates"
VERL_VERSION = "0.9.1"
LICENSE_SOURCE = "verl/experimental/agent_loop/tool_agent_loop.py"  # verl file whose header we reuse
COPYRIGHT = "# Copyright 2026 The research_plugin authors"
AUTHOR_NAME = "research_plugin authors"
AUTHOR_EMAIL = "research-plugin@users.noreply.github.com"
DATE = "2026-01-01T00:00:00+00:00"
MAX_LINE = 120

REWARD = "verl.utils.reward_score.search_agent"
LOOP = "verl.experimental.agent_loop.search_agent_loop"
SEARCH = "verl.experimental.agent_loop.search"

MODULES = {
    "research_plugin.core.answer_metrics": f"{REWARD}.answer_metrics",
    "research_plugin.core.dialects": f"{REWARD}.dialects",
    "research_plugin.core.format_check": f"{REWARD}.format_check",
    "research_plugin.core.rewards": f"{REWARD}.rewards",
    "research_plugin.core.settings": f"{REWARD}.settings",
    "research_plugin.verl.agent_loop": LOOP,
    "research_plugin.core.papers": f"{REWARD}.papers",
    "research_plugin.core.prompts": f"{SEARCH}.prompts",
    "research_plugin.core.search_step": f"{SEARCH}.search_step",
    "research_plugin.core.tokenizing": f"{SEARCH}.tokenizing",
    "research_plugin.core.row_settings": f"{SEARCH}.row_settings",
    "research_plugin.retrieval": f"{SEARCH}.retrieval",
    "research_plugin.retrieval.base": f"{SEARCH}.retrieval.base",
    "research_plugin.retrieval.bm25": f"{SEARCH}.retrieval.bm25",
    "research_plugin.retrieval.http_client": f"{SEARCH}.retrieval.http_client",
    "research_plugin.retrieval.remote": f"{SEARCH}.retrieval.remote",
    "research_plugin.http_retry": f"{SEARCH}.retrieval.http_retry",
}
"""Plugin module -> upstream module, for the modules shipped upstream (moved, with rewritten imports)."""

TEMPLATE_MODULES = {
    "research_plugin": REWARD,
    "research_plugin.data": f"{SEARCH}.two_hop_corpus",
}
"""Plugin module -> upstream module written from ``templates/`` (it must define what shipped modules import)."""

REGISTRIES = {"research_plugin.retrieval": "RETRIEVER_TYPES"}
"""Registry module -> name of its ``{type: factory}`` dict (see :func:`prune_registry`)."""

VERL_PROVIDES = {
    "aiohttp", "datasets", "hydra", "numpy", "omegaconf", "pandas", "PIL", "pyarrow", "pydantic", "ray", "tensordict",
    "torch", "tqdm", "transformers", "yaml", "yarl",
}  # fmt: skip
"""Third-party imports a verl install has (its requirements, and ray[default]'s aiohttp/yarl)."""
OPTIONAL_PIP = {"bm25s": "bm25s", "Stemmer": "PyStemmer"}
"""Optional third-party import -> the pip package that provides it."""

TEXT_EDITS: dict[str, list[tuple[str, str]]] = {
    "research_plugin.verl.agent_loop": [("``research-plugin prepare``", "``preprocess_flashrag.py``")],
    "research_plugin.core.search_step": [("(``research_plugin.retrieval``)", "(``.retrieval``)")],
    "research_plugin.retrieval.http_client": [("RESEARCH_PLUGIN_TOKEN", "VERL_RETRIEVAL_TOKEN")],
    "docs": [("(``research_plugin.retrieval``)", "(see Retrievers below)")],
    "config": [
        ("research_plugin's agent loop", "the search_agent loop"),
        ("project_name: research_plugin", "project_name: verl_search_agent"),
        ("checkpoints/research_plugin/", "checkpoints/verl_search_agent/"),
        ("pkg://research_plugin", f"pkg://{REWARD}"),
        ("the prepared rows", "the preprocessed rows"),
    ],
}
"""Exact text replacements applied before the generic rewriting ("config" applies to every example config)."""

DOCSTRINGS = {
    "research_plugin.retrieval": '''"""Retrieval backends of the search agent loop, built from small specs.

Specs: ``{"type": "bm25", "corpus": "two_hop" | path, "index_dir": ...}`` (in-process BM25; needs ``bm25s`` and
``PyStemmer``) and ``{"type": "http", "url": ..., "timeout": ..., "max_retries": ...}`` (any server speaking
Search-R1's ``POST /retrieve`` API, e.g. ``examples/sglang_multiturn/search_r1_like/local_dense_retriever``). The
string ``"two_hop"`` is BM25 over the example corpus (``examples/search_agent/data``) and an ``http(s)://`` string is
an HTTP client for that endpoint. A new backend is one entry in :data:`RETRIEVER_TYPES` (the other spec keys
become its keyword arguments).
"""''',
}
"""Module docstrings replaced upstream (the plugin's describe backends that stay in the plugin)."""

FIELD_HELP = {
    "dialect": "Tag dialect: how the policy searches and answers (see Dialects below).",
    "top_k": "Passages per search.",
    "max_query_chars": "A query is cut to this many characters.",
}
"""Descriptions of ``SearchAgentConfig`` fields that have no attribute docstring in the plugin."""

UPSTREAM_RETRIEVERS = ("bm25", "http")
TEMPLATE_ROOTS = ("verl", "examples", "docs", "tests")
"""Top folders of ``templates/`` (laid out as verl's repository); other files there (ruff.toml) are not upstream."""
SCRIPT_SUFFIXES = (".py", ".sh")


@dataclass(frozen=True)
class Patch:
    subject: str
    body: str
    prefixes: tuple[str, ...]


PATCHES = (
    Patch(
        "reward_score: add search_agent answer scoring for search-augmented QA",
        "Rewards of ReSearch (F1, 0.1 for a wrong but well-formed answer, 0 for a bad\n"
        "format), R1-Searcher (stage 1: search + format; stage 2: answer metric minus a\n"
        "format penalty) and Search-R1 (exact match), as one compute_score for\n"
        "reward.custom_reward_function (path=pkg://verl.utils.reward_score.search_agent).\n\n"
        "answer_metrics: SQuAD/HotpotQA normalisation, EM, token F1 and cover-EM.\n"
        "dialects: the tag dialects (<search>/<result>, R1-Searcher's, Search-R1's) and the\n"
        "only code that parses them. format_check: a linear scan of a whole response.\n"
        "Retrieved text is stripped before the answer is extracted, so a passage can\n"
        "never supply the answer. Pure Python + numpy; nothing new to install.",
        ("verl/utils/reward_score/",),
    ),
    Patch(
        "agent_loop: add search_agent loop with BM25 and HTTP retrievers",
        "The policy generates until it closes a query tag (the dialect's stop string,\n"
        "plus stop_token_ids for engines without stop strings); the retriever's passages\n"
        "are appended as a result block with response_mask 0 and log-prob 0, and\n"
        "generation goes on until EOS or the response budget. Sampled ids and log-probs\n"
        "are kept as the server returned them; only result blocks are tokenised.\n\n"
        "Settings come from a top-level search_agent config block, agent_loop_config_path\n"
        "entries and a row's extra_info; per-trajectory counters (num_searches,\n"
        "num_failed_searches, retrieved_tokens, retrieval_s, ...) go to extra_fields and\n"
        "reach the reward function. A failing or slow retriever is recorded in the\n"
        "trajectory and never fails the step.\n\n"
        "Retrievers: in-process BM25 (bm25s, an optional dependency imported on use) and\n"
        "an aiohttp client for Search-R1's /retrieve API with timeouts, bounded retries\n"
        "and Retry-After. The loop is registered like the built-in ones, by importing it\n"
        "in verl/experimental/agent_loop/__init__.py.",
        ("verl/experimental/agent_loop/",),
    ),
    Patch(
        "examples: add search_agent example, configs and docs page",
        "examples/search_agent: a FlashRAG-jsonl preprocessing script, a run script,\n"
        "configs after ReSearch, R1-Searcher and Search-R1, a one-GPU quick start, and a\n"
        "small corpus + two-hop questions about a fictional world (written for this\n"
        'example) behind the "two_hop" retriever. docs/advance/search_agent.md documents\n'
        "the loop's settings, dialects, reward schemes and retrievers.",
        ("examples/", "docs/"),
    ),
    Patch(
        "tests: add CPU tests for search_agent scoring, retrieval and loop",
        "Scoring, format check and dialect parsing; BM25 and the HTTP client against a\n"
        "real aiohttp server on loopback (errors, retries, malformed answers); the agent\n"
        "loop against a scripted server speaking verl's generate protocol with a byte-level\n"
        "tokenizer built in the test (masks, log-probs, limits, failures); every example\n"
        "config composes with verl's ppo_trainer and passes verl's config validation.",
        ("tests/",),
    ),
)


class GenerationError(RuntimeError):
    """A plugin change the generator's rules do not cover; the message names the rule to update."""


# ----------------------------------------------------------------------------------------------------------------
# inputs


def verl_distribution() -> importlib.metadata.Distribution:
    dist = importlib.metadata.distribution("verl")
    if dist.version != VERL_VERSION:
        raise GenerationError(f"the series targets verl {VERL_VERSION}, but verl {dist.version} is installed")
    return dist


def verl_file(dist: importlib.metadata.Distribution, path: str) -> str:
    return Path(dist.locate_file(path)).read_text(encoding="utf-8")


def license_header(dist: importlib.metadata.Distribution) -> list[str]:
    """verl's Apache-2.0 header (from :data:`LICENSE_SOURCE`) under our copyright line."""
    lines = verl_file(dist, LICENSE_SOURCE).splitlines()
    header = [line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]]
    if not header or not header[0].startswith("# Copyright") or "Apache License" not in "\n".join(header):
        raise GenerationError(f"{LICENSE_SOURCE} no longer starts with the Apache-2.0 header")
    return [COPYRIGHT, *header[1:]]


def plugin_path(module: str) -> Path:
    rel = Path(*module.split("."))
    return ROOT / (rel / "__init__.py" if (ROOT / rel).is_dir() else rel.with_suffix(".py"))


def upstream_path(module: str, package: bool) -> str:
    rel = "/".join(module.split("."))
    return f"{rel}/__init__.py" if package else f"{rel}.py"


# ----------------------------------------------------------------------------------------------------------------
# Python source rewriting


def splice(text: str, first: int, last: int, new: list[str]) -> str:
    """Replace lines ``first..last`` (1-based, inclusive) of ``text``."""
    lines = text.split("\n")
    return "\n".join(lines[: first - 1] + new + lines[last:])


def is_package(module: str) -> bool:
    return plugin_path(module).name == "__init__.py"


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """Absolute module name of ``node`` as written in plugin module ``importer``."""
    if not node.level:
        return node.module or ""
    parts = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def upstream_of(module: str) -> str | None:
    return MODULES.get(module) or TEMPLATE_MODULES.get(module)


def target(importer: str, node: ast.ImportFrom) -> tuple[str, int]:
    """(module, level) of ``node`` upstream: relative when it was and the target stays below the importer's package."""
    absolute = resolve(importer, node)
    if not absolute.startswith("research_plugin"):
        return absolute, node.level
    new = upstream_of(absolute)
    if new is None:
        raise GenerationError(
            f"{importer} imports {absolute}, which has no upstream place: add it to MODULES in patches/generate.py "
            "(or change the import)"
        )
    if node.level:
        me = MODULES[importer]
        package = me if is_package(importer) else me.rsplit(".", 1)[0]
        if new.startswith(package + "."):
            return new[len(package) + 1 :], 1
    return new, 0


def _section(module: str, level: int) -> int:
    top = module.split(".")[0]
    if level:
        return 4
    if module == "__future__":
        return 0
    if top in sys.stdlib_module_names:
        return 1
    return 3 if top == "verl" else 2


def _alias(a: ast.alias) -> str:
    return f"{a.name} as {a.asname}" if a.asname else a.name


def _render_import(module: str, level: int, names: list[ast.alias], comment: str) -> list[str]:
    """A ``from`` import as ruff formats it: one line, or one name per line when it is too long."""
    head = f"from {'.' * level}{module} import "
    line = head + ", ".join(_alias(a) for a in names) + comment
    if len(line) <= MAX_LINE:
        return [line]
    if comment:
        raise GenerationError(f"cannot wrap the commented import {line!r}")
    return [head + "(", *(f"    {_alias(a)}," for a in names), ")"]


def rewrite_imports(module: str, text: str) -> str:
    """Point ``research_plugin`` imports at the upstream modules; regroup the top import block in isort order."""
    tree = ast.parse(text)
    lines = text.split("\n")
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    block = []
    for stmt in body:
        if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
            break
        block.append(stmt)
    # nested imports (inside functions): only the module changes, bottom-up so line numbers stay valid
    nested = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n not in block and (n.level or (n.module or "").startswith("research_p"))
    ]
    for node in sorted(nested, key=lambda n: -n.lineno):
        new, level = target(module, node)
        line = lines[node.lineno - 1]
        head = re.compile(r"from\s+\.*[\w.]*\s+import")
        lines[node.lineno - 1] = line[: node.col_offset] + head.sub(
            f"from {'.' * level}{new} import", line[node.col_offset :], count=1
        )
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.startswith("research_plugin") for a in node.names):
            raise GenerationError(f"{module}:{node.lineno}: plain 'import research_plugin...' is not supported")
    if not block:
        return "\n".join(lines)
    first, last = block[0].lineno, block[-1].end_lineno or block[-1].lineno
    covered = {i for n in block for i in range(n.lineno, (n.end_lineno or n.lineno) + 1)}
    stray = [i for i in range(first, last + 1) if i not in covered and lines[i - 1].strip()]
    if stray:
        raise GenerationError(f"{module}:{stray[0]}: a comment inside the import block is not supported")
    entries = []
    for node in block:
        tail = lines[(node.end_lineno or node.lineno) - 1][node.end_col_offset :].strip()
        comment = f"  {tail}" if tail.startswith("#") else ""
        if isinstance(node, ast.Import):
            entries += [(_section(a.name, 0), 0, a.name.lower(), [f"import {_alias(a)}{comment}"]) for a in node.names]
            continue
        new, level = target(module, node)
        entries.append((_section(new, level), 1, new.lower(), _render_import(new, level, node.names, comment)))
    out: list[str] = []
    for section in sorted({e[0] for e in entries}):
        if out:
            out.append("")
        for entry in sorted(e for e in entries if e[0] == section):
            out.extend(entry[3])
    return "\n".join(lines[: first - 1] + out + lines[last:])


REF = re.compile(r"\bresearch_plugin(?:\.[A-Za-z_]\w*)*")


def rewrite_references(where: str, text: str) -> str:
    """``research_plugin.x.y`` in prose -> the upstream name of the longest mapped prefix."""

    def sub(m: re.Match[str]) -> str:
        parts = m.group().split(".")
        for n in range(len(parts), 0, -1):
            new = upstream_of(".".join(parts[:n]))
            if new and n > 1:
                return ".".join([new, *parts[n:]])
        raise GenerationError(f"{where}: no upstream name for {m.group()!r}: add a rule to TEXT_EDITS or MODULES")

    return REF.sub(sub, text)


def apply_edits(key: str, text: str) -> str:
    for old, new in TEXT_EDITS.get(key, []):
        text = text.replace(old, new)
    return text


def replace_docstring(module: str, text: str) -> str:
    tree = ast.parse(text)
    if ast.get_docstring(tree) is None:
        raise GenerationError(f"{module} has no module docstring to replace")
    node = tree.body[0]
    return splice(text, node.lineno, node.end_lineno or node.lineno, DOCSTRINGS[module].split("\n"))


def optional_imports(module: str) -> list[str]:
    """Top-level third-party imports of a shipped plugin module that a verl install does not provide."""
    found = []
    for node in ast.parse(plugin_path(module).read_text(encoding="utf-8")).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            if _section(name, 0) == 2 and top not in VERL_PROVIDES and top != "research_plugin":
                found.append(top)
    return found


def _drop_lines(text: str, ranges: list[tuple[int, int, bool]]) -> str:
    """``text`` without the lines ``first..last`` (1-based) of each range, and the blank lines after one marked so;
    all numbers refer to ``text`` as given (dropped from the bottom up)."""
    lines = text.split("\n")
    for first, last, blank_after in sorted(ranges, reverse=True):
        if blank_after:
            while last < len(lines) and not lines[last].strip():
                last += 1
        del lines[first - 1 : last]
    return "\n".join(lines)


def _assigned(tree: ast.Module, name: str) -> ast.expr:
    """The value of the top-level assignment to ``name``."""
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
            return node.value
    raise GenerationError(f"no top-level assignment to {name}")


def _registry_dict(tree: ast.Module, name: str) -> ast.Dict:
    value = _assigned(tree, name)
    if not isinstance(value, ast.Dict):
        raise GenerationError(f"{name} is no longer a dict literal")
    return value


def prune_registry(module: str, text: str) -> str:
    """Drop factories of backends not shipped upstream; import shipped backends with optional deps lazily."""
    registry = REGISTRIES[module]
    tree = ast.parse(text)
    dropped = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            imported = [resolve(module, n) for n in ast.walk(node) if isinstance(n, ast.ImportFrom)]
            if any(m.startswith("research_plugin") and upstream_of(m) is None for m in imported):
                dropped[node.name] = (
                    node.decorator_list[0].lineno if node.decorator_list else node.lineno,
                    node.end_lineno,
                )
    table = _registry_dict(tree, registry)
    entries = [
        (k.lineno, v.end_lineno, False)
        for k, v in zip(table.keys, table.values, strict=True)
        if isinstance(v, ast.Name) and v.id in dropped
    ]
    text = _drop_lines(text, entries + [(first, last, True) for first, last in dropped.values()])

    # eager imports of shipped backends that need packages verl lacks -> lazy factories, one at a time
    while True:
        eager = [
            (node, optional_imports(resolve(module, node)))
            for node in ast.parse(text).body
            if isinstance(node, ast.ImportFrom) and node.level and resolve(module, node) in MODULES
        ]
        node, missing = next(((n, m) for n, m in eager if m), (None, []))
        if node is None:
            return text
        unknown = [m for m in missing if m not in OPTIONAL_PIP]
        if unknown:
            raise GenerationError(f"{resolve(module, node)} needs {unknown}: add their pip names to OPTIONAL_PIP")
        text = _lazy_factory(module, text, node, [OPTIONAL_PIP[m] for m in missing], registry)


def _lazy_factory(module: str, text: str, node: ast.ImportFrom, pip: list[str], registry: str) -> str:
    if len(node.names) != 1:
        raise GenerationError(f"{module}:{node.lineno}: a lazy backend import must import one class")
    cls, factory = node.names[0].name, "_" + (node.module or "").split(".")[-1]
    tree = ast.parse(text)
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == cls]
    table = _registry_dict(tree, registry)
    in_table = [v for v in table.values if isinstance(v, ast.Name) and v.id == cls]
    exported = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == cls]
    if len(uses) != len(in_table):
        raise GenerationError(f"{module}: {cls} is used outside {registry}; it cannot become lazy")
    lines = text.split("\n")
    for value in in_table:
        row = lines[value.lineno - 1]
        lines[value.lineno - 1] = row[: value.col_offset] + factory + row[value.end_col_offset :]
    for const in exported:  # the name in __all__: one per line, as ruff formats a long list
        row = lines[const.lineno - 1]
        if row.strip() != f'"{cls}",':
            raise GenerationError(f"{module}:{const.lineno}: expected {cls!r} alone on its line in __all__")
        lines[const.lineno - 1] = None  # type: ignore[call-overload]
    assign = next(n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is table)
    packages = " and ".join(f"``{p}``" for p in pip)
    lines[assign.lineno - 1 : assign.lineno - 1] = [
        f"def {factory}(**options: Any) -> Retriever:",
        f'    """``{cls}``, imported on use: it needs {packages}."""',
        "    try:",
        f"        from .{node.module} import {cls}",
        "    except ImportError as e:",
        f'        raise ImportError(f"{{e}}: the {factory[1:]} retriever needs `pip install {" ".join(pip)}`") from e',
        "",
        f"    return {cls}(**options)",
        "",
        "",
    ]
    del lines[node.lineno - 1 : node.end_lineno]
    return "\n".join(line for line in lines if line is not None)


def with_header(text: str, header: list[str], suffix: str) -> str:
    if suffix == ".sh" and text.startswith("#!"):
        shebang, rest = text.split("\n", 1)
        return "\n".join([shebang, *header, rest])
    return "\n".join(header) + "\n\n" + text


def shipped_module(module: str) -> str:
    text = plugin_path(module).read_text(encoding="utf-8")
    if module in DOCSTRINGS:
        text = replace_docstring(module, text)
    text = apply_edits(module, text)
    if module in REGISTRIES:
        text = prune_registry(module, text)
    text = rewrite_imports(module, text)
    return rewrite_references(module, text)


# ----------------------------------------------------------------------------------------------------------------
# facts about the plugin, for the docs tables (read from the source, never imported)


def _tree(module: str) -> ast.Module:
    return ast.parse(plugin_path(module).read_text(encoding="utf-8"))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def dataclass_fields(cls: ast.ClassDef) -> list[tuple[str, ast.expr | None, str | None]]:
    """(name, default, attribute docstring) of each annotated field."""
    out = []
    for i, node in enumerate(cls.body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            nxt = cls.body[i + 1] if i + 1 < len(cls.body) else None
            doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else None
            out.append((node.target.id, node.value, " ".join(doc.split()) if isinstance(doc, str) else None))
    return out


def _literal(node: ast.expr | None) -> str:
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "field":  # field(default=..., metadata=...)
        node = next((kw.value for kw in node.keywords if kw.arg == "default"), None)
    value = ast.literal_eval(node) if node is not None else None
    return str(value)


def settings_table() -> str:
    fields = dataclass_fields(_class(_tree("research_plugin.core.search_step"), "SearchAgentConfig"))
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for name, default, doc in fields:
        help_ = doc or FIELD_HELP.get(name)
        if help_ is None:
            raise GenerationError(f"SearchAgentConfig.{name} has no docstring: document it (or add it to FIELD_HELP)")
        help_ = apply_edits("docs", help_).replace("``", "`").replace("|", "\\|")
        rows.append(f"| `{name}` | `{_literal(default)}` | {help_} |")
    return "\n".join(rows)


def _calls(module: str, registry: str, cls: str) -> list[ast.Call]:
    found = [
        n
        for n in ast.walk(_assigned(_tree(module), registry))
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == cls
    ]
    if not found:
        raise GenerationError(f"{module}.{registry} holds no {cls}(...) calls")
    return found


def _bind(call: ast.Call, fields: list[tuple[str, ast.expr | None, str | None]]) -> dict[str, object]:
    values = {name: (ast.literal_eval(d) if d is not None else None) for name, d, _ in fields}
    for (name, _, _), arg in zip(fields, call.args):
        values[name] = arg.id if isinstance(arg, ast.Name) else ast.literal_eval(arg)
    values.update({kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg})
    return values


def dialects_table() -> str:
    tree = _tree("research_plugin.core.dialects")
    fields = dataclass_fields(_class(tree, "Dialect"))
    rows = ["| dialect | query | result block | answer |", "|---|---|---|---|"]
    for call in _calls("research_plugin.core.dialects", "DIALECTS", "Dialect"):
        d = _bind(call, fields)
        answer = f"`{d['answer_open']} ... {d['answer_close']}`" + (" with `\\boxed{}`" if d["boxed"] else "")
        query, result = f"{d['query_open']} ... {d['query_close']}", f"{d['result_open']} ... {d['result_close']}"
        cells = f"| `{d['name']}` | `{query}` | `{result}`".replace("<|", "<\\|").replace("|>", "\\|>")  # tag pipes
        rows.append(f"{cells} | {answer} |")
    return "\n".join(rows)


def schemes_table() -> str:
    tree = _tree("research_plugin.core.rewards")
    docs = {
        n.name: (ast.get_docstring(n) or "").split("\n")[0].replace("``", "`")
        for n in tree.body
        if isinstance(n, ast.FunctionDef)
    }
    fields = dataclass_fields(_class(tree, "Options"))
    defaults = {name: ast.literal_eval(d) for name, d, _ in fields if d is not None}
    table = _registry_dict(tree, "SCHEMES")
    rows = ["| scheme | dialect | normalisation | options that differ from the defaults | reward |", "|---" * 5 + "|"]
    for key, call in zip(table.keys, table.values, strict=True):
        if not (isinstance(key, ast.Constant) and isinstance(call, ast.Call) and len(call.args) >= 2):
            raise GenerationError(
                "research_plugin.core.rewards.SCHEMES entries must be 'name': Scheme(score, dialect, ...)"
            )
        score, dialect = call.args[0], ast.literal_eval(call.args[1])
        options = call.args[2] if len(call.args) > 2 else None
        if not isinstance(score, ast.Name) or not (options is None or isinstance(options, ast.Call)):
            raise GenerationError("research_plugin.core.rewards.SCHEMES: Scheme(function name, dialect, Options(...))")
        values = {**defaults, **{kw.arg: ast.literal_eval(kw.value) for kw in getattr(options, "keywords", [])}}
        changed = ", ".join(f"`{k}={v}`" for k, v in values.items() if k != "normalization" and v != defaults[k])
        reward = docs.get(score.id, "")
        rows.append(f"| `{key.value}` | `{dialect}` | `{values['normalization']}` | {changed or '-'} | {reward} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------------------------
# recipes -> example configs


RETRIEVAL_SERVER = "examples/sglang_multiturn/search_r1_like/local_dense_retriever/retrieval_server.py"
DEFAULT_URL = "http://127.0.0.1:8000/retrieve"


def _retriever_lines(spec: object) -> tuple[list[str], bool]:
    """(header comment lines describing a recipe's retriever, whether the spec is shipped upstream)."""
    if spec == "two_hop":
        return ["# Retriever: in-process BM25 over the example corpus (examples/search_agent/data)."], True
    if isinstance(spec, str):
        return [
            f"# Retriever: a server speaking Search-R1's POST /retrieve API at {spec}, e.g.",
            f"#   {RETRIEVAL_SERVER}",
        ], True
    if isinstance(spec, dict) and spec.get("type") in UPSTREAM_RETRIEVERS:
        return [f"# Retriever: {spec['type']} {spec}."], True
    inner = spec.get("index", spec) if isinstance(spec, dict) else {}
    index = f"the paper's {inner['type']} index" if isinstance(inner, dict) and "type" in inner else "the paper's index"
    return [
        f"# Retriever: {index} behind Search-R1's POST /retrieve API at {DEFAULT_URL}, e.g.",
        f"#   {RETRIEVAL_SERVER}",
    ], False


def _registered_trainers(sources: list[str]) -> dict[str, list[str]]:
    """``{name: base class names}`` of the classes decorated ``@register_trainer(name)`` in Python ``sources``."""
    found = {}
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.ClassDef):
                continue
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register_trainer" and d.args:
                    found[ast.literal_eval(d.args[0])] = [node.name, *(getattr(b, "id", "") for b in node.bases)]
    return found


def trainer_modes(dist: importlib.metadata.Distribution) -> dict[str, str]:
    """The plugin's trainer modes -> the verl mode they extend (verl's trainer class among their bases)."""
    verl_sources = [
        Path(dist.locate_file(f)).read_text("utf-8") for f in dist.files or [] if f.match("verl/trainer/ppo/v1/*.py")
    ]
    verl = {classes[0]: name for name, classes in _registered_trainers(verl_sources).items()}
    plugin = _registered_trainers([p.read_text("utf-8") for p in sorted((ROOT / "research_plugin").rglob("*.py"))])
    modes = {}
    for name, classes in plugin.items():
        bases = [verl[b] for b in classes[1:] if b in verl]
        if len(bases) != 1:
            raise GenerationError(f"plugin trainer mode {name!r} does not extend exactly one verl trainer: {classes}")
        modes[name] = bases[0]
    return modes


def _verl_trainer_mode(body: list[str], modes: dict[str, str], default: str) -> list[str]:
    """A plugin ``trainer_mode`` becomes the verl mode it extends; the ``v1:`` block goes when that is the default."""
    out = list(body)
    for i, line in enumerate(out):
        m = re.match(r"^(\s*)trainer_mode:\s*(\w+)\s*$", line)
        if not m or m.group(2) not in modes:
            continue
        v1 = i - 1
        if out[v1].strip() != "v1:":
            raise GenerationError(f"trainer_mode is expected right under v1:, got {out[v1]!r}")
        first = v1
        while first > 0 and out[first - 1].strip().startswith("#"):  # the comment about the plugin's mode
            first -= 1
        alone = i + 1 >= len(out) or len(out[i + 1]) - len(out[i + 1].lstrip()) <= len(out[v1]) - len(out[v1].lstrip())
        if modes[m.group(2)] == default and alone:
            del out[first : i + 1]
        else:
            out[i] = f"{m.group(1)}trainer_mode: {modes[m.group(2)]}"
            del out[first:v1]
        return _verl_trainer_mode(out, modes, default)
    return out


def example_config(name: str, text: str, modes: dict[str, str], default_mode: str) -> str | None:
    """A recipe as an example config; None for recipes built on plugin-only pieces (resolvers, CPU backends)."""
    if "${research_plugin." in text:
        return None
    cfg = yaml.safe_load(text)
    agent, reward = cfg.get("search_agent") or {}, cfg["reward"]["custom_reward_function"]
    lines = text.split("\n")
    body_at = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    intro = lines[: next((i for i, line in enumerate(lines[:body_at]) if line == "#"), body_at)]
    body = lines[body_at:]

    retriever, shipped = _retriever_lines(agent.get("retriever", "two_hop"))
    if not shipped:  # the retriever block under search_agent: becomes the HTTP client
        at = body.index("search_agent:")
        i = next(j for j in range(at + 1, len(body)) if body[j].startswith("  retriever:"))
        end = i + 1
        while end < len(body) and (body[end].startswith("    ") or not body[end].strip()):
            end += 1
        body[i:end] = ["  # a server over the paper's index (see Retriever above)", f"  retriever: {DEFAULT_URL}"]

    body = _verl_trainer_mode(body, modes, default_mode)
    train = cfg["data"]["train_files"]
    template = "base" if agent.get("prompt_format") == "raw" else "instruct"
    scheme = (reward.get("reward_kwargs") or {}).get("scheme", "research")
    envs = sorted(set(re.findall(r"\$\{oc\.env:(\w+)", text)))
    header = intro + [
        "#",
        "# Data: verl rows with agent_name search_agent (examples/search_agent/README.md), e.g. from FlashRAG jsonl:",
        "#   python examples/search_agent/preprocess_flashrag.py --input TRAIN.jsonl --split train \\",
        f"#       --dialect {agent.get('dialect', 'research')} --scheme {scheme} --template {template} --out {train}",
        "# and likewise (--split dev / test) for each of data.val_files.",
        *retriever,
        "# Run:",
        *(f"#   export {env}=...   (read by ${{oc.env:{env}}} below)" for env in envs),
        f"#   bash examples/search_agent/run_search_agent.sh {name} [key=value overrides]",
        "",
    ]
    out = apply_edits("config", "\n".join(header + body))
    return rewrite_references(f"recipes/{name}.yaml", out)


# ----------------------------------------------------------------------------------------------------------------
# the file set


def summary(config: str) -> str:
    """The first sentence of a config's header comment."""
    intro = " ".join(line.lstrip("# ") for line in config.split("\n") if line.startswith("#") and line != "#")
    sentence = intro.split(". ", 1)[0].rstrip(".") + "."
    return re.sub(r"(<[^<>\s]+>)", r"`\1`", sentence)  # tags as code, not HTML


def render_template(rel: str, text: str, context: dict[str, Callable[[], str]]) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in context:
            raise GenerationError(f"templates/{rel}: unknown placeholder {{{{{key}}}}}")
        return context[key]()

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", sub, text)


def register_loop(init_text: str) -> str:
    """verl's agent_loop/__init__.py importing the search loop next to the built-in ones (that import registers it)."""
    tree = _tree("research_plugin.verl.agent_loop")
    cls = next(
        n.name
        for n in tree.body
        if isinstance(n, ast.ClassDef)
        and any(isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register" for d in n.decorator_list)
    )
    anchor, keep = (
        "from .single_turn_agent_loop import SingleTurnAgentLoop\n",
        "_ = [SingleTurnAgentLoop, ToolAgentLoop]\n",
    )
    if init_text.count(anchor) != 1 or init_text.count(keep) != 1:
        raise GenerationError("verl/experimental/agent_loop/__init__.py no longer has the expected imports")
    module = LOOP.rsplit(".", 1)[1]
    init_text = init_text.replace(anchor, f"from .{module} import {cls}\n{anchor}")
    return init_text.replace(keep, keep.replace("]", f", {cls}]"))


def check_clean(path: str, text: str) -> None:
    """No plugin reference may survive (the copyright line names the authors), and lines fit verl's limit."""
    for n, line in enumerate(text.split("\n"), 1):
        if line == COPYRIGHT:
            continue
        if re.search(r"research[_-]plugin", line, re.IGNORECASE):
            raise GenerationError(f"{path}:{n}: plugin reference left: {line.strip()!r}; add a rule to TEXT_EDITS")
        if path.endswith(".py") and len(line) > MAX_LINE:
            raise GenerationError(f"{path}:{n}: line longer than {MAX_LINE} (if rewritten: add a TEXT_EDITS rule)")


def check_template_modules(files: dict[str, str]) -> None:
    """Each template module defines what the shipped modules import from the plugin module it stands for."""
    for module, new in TEMPLATE_MODULES.items():
        rel = upstream_path(new, module == "research_plugin")
        if rel not in files:
            raise GenerationError(f"templates/{rel} (upstream {module}) is missing")
        tree = ast.parse(files[rel])
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        for shipped in MODULES:
            for node in ast.walk(_tree(shipped)):
                if isinstance(node, ast.ImportFrom) and resolve(shipped, node) == module:
                    missing = {a.name for a in node.names} - defined
                    if missing:
                        raise GenerationError(f"templates/{rel} must define {sorted(missing)} ({shipped} imports them)")


def check_optional_deps(files: dict[str, str]) -> None:
    """No shipped module imports at load time a shipped module that needs a package verl does not have."""
    back = {new: old for old, new in MODULES.items()}
    for old, new in MODULES.items():
        if optional_imports(old):
            continue
        package = (new if is_package(old) else new.rsplit(".", 1)[0]).split(".")
        for node in ast.parse(files[upstream_path(new, is_package(old))]).body:
            if not isinstance(node, ast.ImportFrom):
                continue
            parts = package[: len(package) - node.level + 1] if node.level else []
            target_ = ".".join(parts + ([node.module] if node.module else []))
            if target_ in back and optional_imports(back[target_]):
                needs = optional_imports(back[target_])
                raise GenerationError(f"{new} imports {target_} at load time, which needs {needs}: import it on use")


def build_files(dist: importlib.metadata.Distribution) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """(new files, modified verl files as (0.9.1 text, new text)), by upstream path."""
    files: dict[str, str] = {}
    for module, new in MODULES.items():
        files[upstream_path(new, is_package(module))] = shipped_module(module)
    modes = trainer_modes(dist)
    default_mode = yaml.safe_load(verl_file(dist, "verl/trainer/config/ppo_trainer.yaml"))["trainer"]["v1"][
        "trainer_mode"
    ]
    for recipe in sorted((ROOT / "research_plugin" / "recipes").glob("*.yaml")):
        cfg = example_config(recipe.stem, recipe.read_text(encoding="utf-8"), modes, default_mode)
        if cfg is not None:
            files[f"examples/search_agent/config/{recipe.stem}.yaml"] = cfg
    for name in ("two_hop_corpus.jsonl", "two_hop_questions.jsonl"):
        files[f"examples/search_agent/data/{name}"] = (ROOT / "research_plugin" / "data" / name).read_text("utf-8")
    templates = sorted(
        p
        for top in TEMPLATE_ROOTS
        for p in (TEMPLATES / top).rglob("*")
        if p.is_file() and not any(part.startswith((".", "__pycache__")) for part in p.parts)
    )
    for path in templates:
        files[path.relative_to(TEMPLATES).as_posix()] = path.read_text(encoding="utf-8")

    configs = {Path(rel).stem: text for rel, text in files.items() if rel.startswith("examples/search_agent/config/")}
    context = {
        "settings_table": settings_table,
        "dialects_table": dialects_table,
        "schemes_table": schemes_table,
        "configs_list": lambda: "\n".join(
            f"- `config/{name}.yaml`: {summary(text)}" for name, text in sorted(configs.items())
        ),
    }
    header = license_header(dist)
    for rel, text in files.items():
        if rel.endswith(".md"):
            text = render_template(rel, text, context)
        if rel.endswith(SCRIPT_SUFFIXES):
            text = with_header(text, header, Path(rel).suffix)
        text = text if text.endswith("\n") else text + "\n"
        check_clean(rel, text)
        if rel.endswith(".py"):
            compile(text, rel, "exec")
        files[rel] = text
    check_template_modules(files)
    check_optional_deps(files)
    init = "verl/experimental/agent_loop/__init__.py"
    base = verl_file(dist, init)
    return files, {init: (base, register_loop(base))}


# ----------------------------------------------------------------------------------------------------------------
# git


def _git_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_AUTHOR_DATE=DATE,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_DATE=DATE,
        LC_ALL="C",
        TZ="UTC",
    )
    return env


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    path.chmod(0o755 if rel.endswith(".sh") else 0o644)


def patch_of(rel: str) -> int:
    owners = [i for i, p in enumerate(PATCHES) if rel.startswith(p.prefixes)]
    if len(owners) != 1:
        raise GenerationError(f"{rel} belongs to {len(owners)} patches; fix the prefixes in PATCHES")
    return owners[0]


FORMAT_PATCH = (
    "--zero-commit",  # "From 000..." lines: independent of the scratch repo's commit ids
    "--full-index",  # full blob ids: independent of the abbreviation length
    "--no-signature",  # no "-- <git version>" trailer
    "--no-renames",
    "--numbered",
    "--filename-max-length=80",
)


def write_series(out: Path) -> list[Path]:
    """Generate the series into ``out`` (its old ``*.patch`` files are removed); returns the patch files."""
    dist = verl_distribution()
    files, changed = build_files(dist)
    with tempfile.TemporaryDirectory(prefix="verl-series-") as tmp:
        repo = Path(tmp) / "verl"
        env = _git_env(Path(tmp))

        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout

        repo.mkdir()
        git("init", "-q", "-b", "main")
        git("config", "core.fileMode", "true")
        for rel, (text, _) in changed.items():
            _write(repo, rel, text)
        git("add", "-A")
        git("commit", "-q", "-m", f"verl {VERL_VERSION}: the files this series modifies")
        for i, patch in enumerate(PATCHES):
            for rel, text in sorted([*files.items(), *((r, new) for r, (_, new) in changed.items())]):
                if patch_of(rel) == i:
                    _write(repo, rel, text)
            git("add", "-A")
            git("commit", "-q", "-m", f"{patch.subject}\n\n{patch.body}")
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.patch"):
            old.unlink()
        names = git("format-patch", *FORMAT_PATCH, "--output-directory", str(out.resolve()), f"HEAD~{len(PATCHES)}")
    return [Path(line) for line in names.splitlines()]


def check(committed: Path) -> list[str]:
    """Differences between ``committed``'s patches and a fresh generation (empty when up to date)."""
    with tempfile.TemporaryDirectory(prefix="verl-series-check-") as tmp:
        fresh = Path(tmp)
        write_series(fresh)
        old = {p.name for p in committed.glob("*.patch")}
        new = {p.name for p in fresh.glob("*.patch")}
        problems = [f"missing: {n}" for n in sorted(new - old)] + [f"stale: {n}" for n in sorted(old - new)]
        problems += [f"differs: {n}" for n in sorted(old & new) if not filecmp.cmp(committed / n, fresh / n, False)]
        return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with a fresh generation; exit 1 if different")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the series (default: patches/)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check(args.out)
            if problems:
                print("patches/ is out of date with research_plugin; run: python patches/generate.py", file=sys.stderr)
                print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
                return 1
            print("patches/ is up to date")
            return 0
        for path in write_series(args.out):
            print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    except GenerationError as e:
        print(f"patches/generate.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
