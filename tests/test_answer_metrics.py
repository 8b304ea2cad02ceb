import numpy as np
import pytest

from research_plugin.core.answer_metrics import (
    as_gold_list,
    cover_exact_match,
    exact_match,
    f1_score,
    normalize_answer,
    precision_recall_f1,
    token_cover_match,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  a   cat, an apple & the dog!  ", "cat apple dog"),
        ("Theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("rock'n'roll", "rocknroll"),  # punctuation removed, not replaced
        ("", ""),
    ],
)
def test_normalize_squad(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_punctuation_variants():
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("U.S.B.", normalization="space") == "u s b"
    # quirk of the space variant: the split-off "a" is then dropped as an article
    assert normalize_answer("U.S.A.", normalization="space") == "u s"
    assert normalize_answer("Jean-Paul ‘Sartre’", normalization="space") == "jean paul sartre"
    # a punctuation-glued article becomes a whole word only in the space variant
    assert normalize_answer("the-end") == "theend"
    assert normalize_answer("the-end", normalization="space") == "end"
    with pytest.raises(ValueError):
        normalize_answer("x", normalization="keep")


def test_exact_match():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0
    assert exact_match("usa", "U.S.A.") == 1.0
    assert exact_match("usa", "U.S.A.", normalization="space") == 0.0
    assert exact_match(None, "x") == 0.0


def test_f1_hand_checked():
    # pred "eiffel tower in paris" (4 tokens) vs gold "eiffel tower" (2): common 2 -> P=2/4, R=2/2, F1=2/3
    assert f1_score("the Eiffel Tower in Paris", "Eiffel Tower") == pytest.approx(2 / 3)
    assert precision_recall_f1("the Eiffel Tower in Paris", "Eiffel Tower") == pytest.approx((0.5, 1.0, 2 / 3))
    # pred "barack obama" vs gold "barack hussein obama ii": common 2 -> P=1, R=2/4, F1=2/3
    assert f1_score("Barack Obama", "Barack Hussein Obama II") == pytest.approx(2 / 3)
    # repeated tokens count once per gold occurrence: pred "new new york" vs "new york":
    # common min(2,1)+1 = 2 -> P=2/3, R=1, F1=0.8
    assert f1_score("new new york", "New York") == pytest.approx(0.8)
    assert f1_score("Paris", "London") == 0.0
    assert f1_score(None, "x") == 0.0


def test_f1_yes_no_rule():
    # HotpotQA: yes/no/noanswer must match exactly, token overlap does not count
    assert f1_score("yes", "yes") == 1.0
    assert f1_score("yes", "no") == 0.0
    assert f1_score("yes", "yes indeed") == 0.0
    assert f1_score("no way", "no") == 0.0
    assert f1_score("No.", "no") == 1.0


def test_max_over_golds():
    golds = ["Eiffel Tower", "La tour Eiffel", "tower"]
    # "eiffel tower" vs "tower": P=1/2, R=1, F1=2/3; vs "eiffel tower": F1=1 -> max is 1
    assert f1_score("Eiffel Tower", golds) == 1.0
    assert exact_match("tower", golds) == 1.0
    # pred "tour" vs "la tour eiffel" -> normalised "la tour eiffel": P=1, R=1/3, F1=0.5
    assert f1_score("tour", golds) == pytest.approx(0.5)
    assert precision_recall_f1("tour", golds) == pytest.approx((1.0, 1 / 3, 0.5))


@pytest.mark.parametrize(
    "golds",
    [
        "Eiffel Tower",
        ["Paris", "Eiffel Tower"],
        ("Eiffel Tower",),
        np.array(["Paris", "Eiffel Tower"], dtype=object),
        np.array(["Paris", "Eiffel Tower"]),
        {"target": np.array(["Eiffel Tower"], dtype=object)},
    ],
)
def test_gold_shapes(golds):
    assert "Eiffel Tower" in as_gold_list(golds)
    assert all(isinstance(g, str) for g in as_gold_list(golds))
    assert exact_match("eiffel tower", golds) == 1.0
    assert f1_score("eiffel tower", golds) == 1.0
    assert cover_exact_match("it is the eiffel tower", golds) == 1.0


@pytest.mark.parametrize("golds", [[], (), np.array([], dtype=object), None, {}, {"target": []}])
def test_empty_golds_score_zero(golds):
    assert as_gold_list(golds) == []
    assert exact_match("x", golds) == 0.0
    assert f1_score("x", golds) == 0.0
    assert cover_exact_match("x", golds) == 0.0


def test_as_gold_list_misc():
    assert as_gold_list(1984) == ["1984"]
    assert as_gold_list(b"bytes") == ["bytes"]
    assert as_gold_list([["a", "b"], np.array(["c"])]) == ["a", "b", "c"]


def test_cover_exact_match():
    assert cover_exact_match("the Eiffel Tower in Paris", "Eiffel Tower") == 1.0
    assert cover_exact_match("Tower Eiffel", "Eiffel Tower") == 0.0  # order matters
    assert cover_exact_match("Eiffel Towers", "Eiffel Tower") == 0.0  # token boundaries
    assert cover_exact_match("New York City", ["Boston", "new york"]) == 1.0
    assert cover_exact_match("The U.S.A.!", "usa") == 1.0
    assert cover_exact_match("u s a", "U.S.A.", normalization="space") == 1.0
    assert cover_exact_match("", "the") == 1.0  # empty gold only covered by empty prediction
    assert cover_exact_match("something", "the") == 0.0
    assert cover_exact_match(None, "x") == 0.0


def test_token_cover_match_a_gold_that_normalises_to_nothing():
    # R1-Searcher's cover_exact_match_score_1 splits on " ": gold "A" is [""], covered only by an empty prediction.
    # A blood-type question ("A") must not pay for any answer.
    assert token_cover_match("B", "A") == 0.0
    assert token_cover_match("O negative", "The", normalization="r1_searcher") == 0.0
    assert token_cover_match("the", "A") == 1.0  # both normalise to nothing
    assert token_cover_match("B", ["A", "b"]) == 1.0  # another gold still counts
    assert token_cover_match("madison james", "James Madison") == 1.0
