"""Labelled data for task pruning: the built-in tasks and every bad file's message."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from compression.core.errors import DataError
from service.models import taskdata

pytestmark = pytest.mark.unit


def test_python_topics_is_five_unambiguous_classes_split_stratified():
    examples = taskdata.topic_examples()
    counts = collections.Counter(label for label, _ in examples)
    assert set(counts) == set(taskdata.TOPIC_GROUPS)
    assert min(counts.values()) >= 100, counts
    assert len({s for _, s in examples}) == len(examples)  # one label per sentence
    train, validation = taskdata.stratified_split(examples)
    assert not {s for _, s in train} & {s for _, s in validation}
    share = len(validation) / len(examples)
    assert 0.28 <= share <= 0.32, share
    assert taskdata.label_names(train, validation) == sorted(taskdata.TOPIC_GROUPS)


def test_tsv_and_csv_are_read(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("pos\tGood film.\n\nneg\tBad film.\n", encoding="utf-8")
    assert taskdata.read_labelled_text(tsv) == [("pos", "Good film."), ("neg", "Bad film.")]
    csv = tmp_path / "t.csv"
    csv.write_text('Text,Label\n"Good, truly.",pos\nBad.,neg\n', encoding="utf-8")
    assert taskdata.read_labelled_text(csv) == [("pos", "Good, truly."), ("neg", "Bad.")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.tsv", "", "is empty"),
        ("nolabel.tsv", "pos\tGood.\nno tab here\n", r"line 2: expected label<TAB>sentence"),
        ("nolabel2.tsv", "pos\tGood.\n\tBad.\n", r"line 2: expected label<TAB>sentence"),
        ("cols.csv", "a,b\n1,2\n", "needs a label column"),
        ("rows.csv", "label,text\n", "has a header and no rows"),
        ("cell.csv", "label,text\npos,\n", "line 2: empty"),
    ],
)
def test_bad_text_files_name_the_line_or_what_was_expected(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        taskdata.read_labelled_text(path)


def test_bad_arrays_and_labels(tmp_path):
    np.savez(tmp_path / "x_only.npz", x=np.zeros((3, 4)))
    with pytest.raises(DataError, match="'x' .* and 'y'"):
        taskdata.read_labelled_arrays(tmp_path / "x_only.npz")
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((3, 4)), y=np.zeros(2))
    with pytest.raises(DataError, match="3 inputs but 2 labels"):
        taskdata.read_labelled_arrays(tmp_path / "mismatch.npz")
    with pytest.raises(DataError, match="one class .'a'. only"):
        taskdata.label_names([("a", 1), ("a", 2)], None)
    with pytest.raises(DataError, match=r"validation labels \['c'\] never appear"):
        taskdata.label_names([("a", 1), ("b", 2)], [("c", 3)])
