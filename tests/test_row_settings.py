"""A row's settings, resolved once for both frameworks: the documented precedence, case by case."""

from __future__ import annotations

import logging

import pytest

from research_plugin.core.row_settings import RowSettings, row_settings
from research_plugin.core.search_step import SearchAgentConfig


def test_nothing_given_is_the_defaults():
    assert row_settings(None) == RowSettings(SearchAgentConfig(), "research", False)
    assert row_settings({"answers": ["x"]}, {"a": None, "b": {}}) == RowSettings(SearchAgentConfig(), "research", False)


def test_the_dialect_of_the_scheme_when_nothing_names_one():
    assert row_settings({}, scheme="r1_stage2").search.dialect == "r1_searcher"  # the framework's scheme
    assert row_settings({"scheme": "search_r1_em"}).search.dialect == "search_r1"  # else the row's
    both = row_settings({"scheme": "search_r1_em"}, scheme="r1_stage1")
    assert (both.scheme, both.search.dialect) == ("r1_stage1", "r1_searcher")  # the framework's scheme wins


def test_framework_settings_in_order_then_the_rows_search_dict():
    framework = {"trainer": {"dialect": "search_r1", "top_k": 3, "max_searches": 4}, "loop": {"top_k": 4}}
    s = row_settings({}, framework, scheme="r1_stage2").search
    assert (s.dialect, s.top_k, s.max_searches) == ("search_r1", 4, 4)  # settings beat the scheme's dialect
    s = row_settings({"search": {"top_k": 2, "dialect": "research"}}, framework, scheme="r1_stage2").search
    assert (s.dialect, s.top_k, s.max_searches) == ("research", 2, 4)  # the row's search dict beats the settings


def test_the_rows_dialect_wins_over_everything(caplog):
    framework = {"trainer": {"dialect": "search_r1"}}
    row = {"id": "q7", "dialect": "r1_searcher", "search": {"top_k": 2}}
    assert row_settings(row, framework, scheme="research").search.dialect == "r1_searcher"
    with caplog.at_level(logging.WARNING, logger="research_plugin.core.row_settings"):
        s = row_settings({**row, "search": {"dialect": "research", "top_k": 2}}, framework).search
    assert (s.dialect, s.top_k) == ("r1_searcher", 2)
    assert "row 'q7': search.dialect 'research' is overruled by the row's dialect 'r1_searcher'" in caplog.text


def test_opens_think_is_the_frameworks_when_it_sets_one_else_the_rows():
    assert row_settings({"opens_think": True}).opens_think is True
    assert row_settings({"opens_think": True}, opens_think=False).opens_think is False
    assert row_settings({}, opens_think=True).opens_think is True
    assert row_settings({"opens_think": "false"}).opens_think is False  # a string read as what it says
    assert row_settings({"opens_think": None}).opens_think is False


def test_bad_rows_are_clear_errors_naming_the_row_and_the_source():
    with pytest.raises(ValueError, match=r"row 'q1': unknown reward scheme 'r1_stage3' \(did you mean 'r1_stage2'\?\)"):
        row_settings({"id": "q1", "scheme": "r1_stage3"})
    with pytest.raises(ValueError, match=r"reward settings: unknown reward scheme 'nope'"):
        row_settings({"id": "q1", "scheme": "research"}, scheme="nope")
    with pytest.raises(ValueError, match=r"row 'q1': search: must be a mapping"):
        row_settings({"id": "q1", "search": "top_k=3"})
    with pytest.raises(ValueError, match=r"row 'q1': search.*top_kk"):
        row_settings({"id": "q1", "search": {"top_kk": 3}})
    with pytest.raises(ValueError, match=r"row 'q1': dialect.*klingon"):
        row_settings({"id": "q1", "dialect": "klingon"})
    with pytest.raises(ValueError, match=r"trainer.*top_k"):
        row_settings({}, {"trainer": {"top_k": 0}})
    with pytest.raises(ValueError, match=r"row 3: opens_think must be true or false, not 'yes'"):
        row_settings({"index": 3, "opens_think": "yes"})
