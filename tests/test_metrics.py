"""Metrics against hand-computed answers and, where installed, scikit-learn / scipy / seqeval."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from onebert.tasks.readers import iob1_to_iob2, read_conll
from onebert.tasks.metrics import (accuracy, average_ranks, classification_metrics, entity_scores, f1_score,
                                   find_best_threshold, get_entities, matthews_corrcoef, normalize_answer, pearson,
                                   precision_recall_f1, regression_metrics, spearman, squad_metrics)

# ---------------------------------------------------------------------- classification and regression


def test_binary_scores_match_a_hand_counted_confusion_matrix():
    # TP = 3 (rows 0-2), FN = 1 (row 3), FP = 1 (row 4), TN = 2 (rows 5-6).
    labels = [1, 1, 1, 1, 0, 0, 0]
    predictions = [1, 1, 1, 0, 1, 0, 0]
    result = classification_metrics(predictions, labels, num_labels=2)
    assert result["accuracy"] == pytest.approx(5 / 7)
    assert result["precision"] == pytest.approx(3 / 4)
    assert result["recall"] == pytest.approx(3 / 4)
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 - 1) / sqrt(4*4*3*3) = 5/12.
    assert result["mcc"] == pytest.approx(5 / 12)
    # Macro F1: class 1 F1 = 3/4; class 0: P = 2/3, R = 2/3, F1 = 2/3; mean = 17/24.
    assert result["f1_macro"] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_mcc_is_zero_when_one_side_is_constant_and_minus_one_when_inverted():
    assert matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_multiclass_macro_f1_and_mcc_by_hand():
    # Confusion (rows gold, columns predicted) for classes 0, 1, 2:
    #   gold 0: 2 -> 0, 1 -> 1;  gold 1: 1 -> 1, 1 -> 2;  gold 2: 2 -> 2.
    labels = [0, 0, 0, 1, 1, 2, 2]
    predictions = [0, 0, 1, 1, 2, 2, 2]
    # F1 class 0 = 2*2/(2+3) = 0.8; class 1 = 2*1/(2+2) = 0.5; class 2 = 2*2/(3+2) = 0.8.
    p, r, f = precision_recall_f1(predictions, labels, "macro")
    assert f == pytest.approx((0.8 + 0.5 + 0.8) / 3)
    # MCC = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)); c = 5, s = 7,
    # predicted counts p = (2, 2, 3), true counts t = (3, 2, 2).
    expected = (5 * 7 - (2 * 3 + 2 * 2 + 3 * 2)) / math.sqrt((49 - (4 + 4 + 9)) * (49 - (9 + 4 + 4)))
    assert matthews_corrcoef(predictions, labels) == pytest.approx(expected)
    assert accuracy(predictions, labels) == pytest.approx(5 / 7)


def test_pearson_and_spearman_with_ties_by_hand():
    x, y = [1, 2, 3, 4], [2, 4, 5, 4]
    # dx = (-1.5, -.5, .5, 1.5), dy = (-1.75, .25, 1.25, .25): sum dx*dy = 3.5, sum dx^2 = 5, sum dy^2 = 4.75.
    assert pearson(x, y) == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    # y's ranks with the tie averaged: (1, 2.5, 4, 2.5); Pearson of ranks = 3 / sqrt(5 * 4.5).
    assert average_ranks(y).tolist() == [1.0, 2.5, 4.0, 2.5]
    assert spearman(x, y) == pytest.approx(3 / math.sqrt(5 * 4.5))
    assert regression_metrics([1.0, 2.0], [1.0, 4.0])["mse"] == pytest.approx(2.0)


def test_classification_metrics_agree_with_scikit_learn_and_scipy_on_random_data():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for num_labels in (2, 3, 5):
        labels = rng.integers(0, num_labels, 200)
        predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, num_labels, 200))
        ours = classification_metrics(predictions, labels, num_labels)
        assert ours["mcc"] == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, predictions))
        assert ours["f1_macro"] == pytest.approx(sklearn_metrics.f1_score(labels, predictions, average="macro"))
        if num_labels == 2:
            assert ours["f1"] == pytest.approx(sklearn_metrics.f1_score(labels, predictions))
    x = rng.integers(0, 6, 300).astype(float)  # many ties
    y = x + rng.normal(0, 2, 300).round()
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)


# ---------------------------------------------------------------------- NER, conlleval

# conlleval input: word, gold tag, predicted tag. Worked out by hand (entities as type(first-last)):
#   S1 gold PER(0-1) LOC(4-5);         pred PER(0-1) LOC(4) LOC(5)   <- B/I mismatch splits "New York"
#   S2 gold ORG(0) MISC(2) PER(4-5);   pred ORG(0) LOC(2) PER(4)     <- wrong type, short boundary
#   S3 gold LOC(0);                    pred LOC(0) MISC(2)           <- I-LOC after nothing starts a chunk
#                                                                       (conlleval), spurious MISC
# gold 6, predicted 8, correct 3 (PER S1, ORG S2, LOC S3):
#   precision 3/8, recall 3/6, F1 = 2PR/(P+R) = 3/7 (conlleval prints FB1 42.86).
# Per type (correct / predicted / gold): PER 1/2/2 -> F1 0.5; LOC 1/4/2 -> P .25 R .5 F1 1/3;
#   ORG 1/1/1 -> 1; MISC 0/1/1 -> 0. Token accuracy: 11 of 16 tags equal.
CONLLEVAL_FILE = """\
-DOCSTART- -X- -X-

John B-PER B-PER
Smith I-PER I-PER
lives O O
in O O
New B-LOC B-LOC
York I-LOC B-LOC
. O O

EU B-ORG B-ORG
rejects O O
German B-MISC B-LOC
call O O
Peter B-PER B-PER
Blackburn I-PER O

Paris B-LOC I-LOC
is O O
nice O I-MISC
"""


def _read_conlleval(text: str) -> tuple[list[list[str]], list[list[str]]]:
    gold, predicted, g, p = [], [], [], []
    for line in [*text.splitlines(), ""]:
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if g:
                gold.append(g)
                predicted.append(p)
                g, p = [], []
            continue
        g.append(fields[-2])
        p.append(fields[-1])
    return gold, predicted


def test_entity_f1_of_a_hand_made_conlleval_file():
    gold, predicted = _read_conlleval(CONLLEVAL_FILE)
    result = entity_scores(gold, predicted)
    assert result["precision"] == pytest.approx(3 / 8)
    assert result["recall"] == pytest.approx(3 / 6)
    assert result["f1"] == pytest.approx(3 / 7)
    assert round(100 * result["f1"], 2) == 42.86
    assert result["accuracy"] == pytest.approx(11 / 16)
    per_type = result["per_type"]
    assert per_type["PER"]["f1"] == pytest.approx(0.5) and per_type["PER"]["number"] == 2
    assert per_type["LOC"]["precision"] == pytest.approx(0.25)
    assert per_type["LOC"]["f1"] == pytest.approx(1 / 3)
    assert per_type["ORG"]["f1"] == 1.0
    assert per_type["MISC"]["f1"] == 0.0


def test_iob1_input_gives_the_same_entities_as_its_iob2_conversion(tmp_path):
    # IOB1: entities start with I-; B- only where a PER entity directly follows another PER.
    iob1 = ["I-PER", "B-PER", "O", "I-LOC", "I-LOC", "I-ORG", "O", "I-MISC"]
    iob2 = ["B-PER", "B-PER", "O", "B-LOC", "I-LOC", "B-ORG", "O", "B-MISC"]
    assert iob1_to_iob2(iob1) == iob2
    expected = [("PER", 0, 0), ("PER", 1, 1), ("LOC", 3, 4), ("ORG", 5, 5), ("MISC", 7, 7)]
    assert get_entities(iob1) == get_entities(iob2) == expected
    # A prediction that misses one LOC token: 4 of 5 entities right either way.
    predicted = ["B-PER", "B-PER", "O", "B-LOC", "O", "B-ORG", "O", "B-MISC"]
    assert entity_scores([iob1], [predicted])["f1"] == entity_scores([iob2], [predicted])["f1"] == pytest.approx(0.8)
    # And the CoNLL reader converts IOB1 files on reading.
    words = ["Alex", "Mary", "and", "New", "York", "IBM", "'s", "Linux"]
    path = tmp_path / "iob1.txt"
    path.write_text("".join(f"{w} NNP {t}\n" for w, t in zip(words, iob1)))
    assert read_conll(path)[0].tags == iob2
    assert read_conll(path, scheme="iob2")[0].tags == iob1


def test_entity_scores_match_seqeval_on_random_tag_sequences():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = random.Random(1)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-ORG"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    predicted = [[t if rng.random() < 0.7 else rng.choice(tags) for t in sentence] for sentence in gold]
    ours = entity_scores(gold, predicted)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, predicted))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, predicted))
    assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, predicted))
    report = seqeval.classification_report(gold, predicted, output_dict=True)
    for kind, scores in ours["per_type"].items():
        assert scores["f1"] == pytest.approx(report[kind]["f1-score"])
        assert scores["number"] == report[kind]["support"]


# ---------------------------------------------------------------------- SQuAD, official rules


def test_normalize_answer_follows_the_official_order():
    # lower case, punctuation removed (no space left behind), articles removed, whitespace collapsed.
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # "the" only as a whole word
    assert normalize_answer("  Denver\tBroncos ") == "denver broncos"


def test_squad_v1_exact_match_and_f1_on_hand_made_predictions():
    gold = {
        "q1": ["Denver Broncos", "The Denver Broncos"],  # articles and case do not matter
        "q2": ["red fox jumps"],  # partial overlap
        "q3": ["1990s", "the 1990's"],  # max over gold answers
        "q4": ["Paris"],  # wrong
    }
    predictions = {"q1": "denver broncos.", "q2": "the big red fox", "q3": "1990's", "q4": "London"}
    # q1: EM 1, F1 1. q2: tokens (big, red, fox) vs (red, fox, jumps): P = R = 2/3, F1 = 2/3, EM 0.
    # q3: "1990's" normalises to "1990s" = first gold: EM 1. q4: 0.
    result = squad_metrics(predictions, gold)
    assert result["exact_match"] == pytest.approx(100 * 2 / 4)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert result["total"] == 4
    assert "HasAns_exact" not in result
    # A missing prediction scores 0 in v1.1.
    assert squad_metrics({"q1": "Denver Broncos"}, gold)["exact_match"] == pytest.approx(25.0)


def test_squad_v2_no_answer_scoring_and_breakdowns():
    gold = {"a1": ["Normandy"], "a2": ["in the 10th century", "10th century"], "n1": [], "n2": []}
    predictions = {"a1": "Normandy", "a2": "", "n1": "", "n2": "France"}
    # a1: 1/1. a2: an empty prediction for an answerable question: 0/0. n1: "" vs "": 1/1. n2: 0/0.
    result = squad_metrics(predictions, gold)
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(50.0)
    assert (result["HasAns_exact"], result["HasAns_total"]) == (50.0, 2)
    assert (result["NoAns_exact"], result["NoAns_f1"], result["NoAns_total"]) == (50.0, 50.0, 2)
    assert f1_score("", "") == 1.0 and f1_score("x", "") == 0.0


def test_squad_versions_differ_only_where_the_official_scripts_do():
    # A gold answer that normalises to nothing: v1.1 keeps it (F1 0 even for an empty prediction),
    # v2.0 drops it and scores the question as unanswerable.
    gold = {"q": ["The"]}
    assert squad_metrics({"q": ""}, gold, version="1.1")["exact_match"] == 100.0
    assert squad_metrics({"q": ""}, gold, version="1.1")["f1"] == 0.0
    assert squad_metrics({"q": ""}, gold, version="2.0")["f1"] == 100.0


def test_best_threshold_follows_the_official_find_best_thresh():
    # q1 answerable, its best span right (F1 1), no-answer score -2; q2 unanswerable but with a
    # span "foo", score 1; q3 answerable, span half right (F1 0.5), score 3. Answering nothing scores
    # 1 (q2). In order of score: +q1 -> 2 (best, threshold -2), +q2 -> 1, +q3 -> 1.5.
    predictions = {"q1": "Rollo", "q2": "foo", "q3": "the red fox"}
    scores = {"q1": 1.0, "q2": 0.0, "q3": 0.5}
    no_answer = {"q1": -2.0, "q2": 1.0, "q3": 3.0}
    has_answer = {"q1": True, "q2": False, "q3": True}
    best, threshold = find_best_threshold(predictions, scores, no_answer, has_answer)
    assert best == pytest.approx(100 * 2 / 3)
    assert threshold == -2.0
    gold = {"q1": ["Rollo"], "q2": [], "q3": ["red fox jumps over"]}
    result = squad_metrics({"q1": "Rollo", "q2": "", "q3": ""}, gold, no_answer_scores=no_answer,
                           best_non_null=predictions)
    assert result["best_f1_thresh"] == -2.0
    assert result["best_f1"] == pytest.approx(100 * 2 / 3)
