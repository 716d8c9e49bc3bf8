"""Text data: tokeniser, train-only vocabulary, robust reading, readers, folds."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab._util import CnnlabError
from cnnlab.data.text import (
    Vocabulary,
    read_lines,
    read_mr,
    read_text_csv,
    read_text_folder,
    read_trec,
    stratified_folds,
    tokenize,
)


@pytest.mark.parametrize("text, tokens", [
    ("It's a MOVIE!", ["it's", "a", "movie", "!"]),
    ("the film , is n't good .", ["the", "film", ",", "is", "n't", "good", "."]),
    ('" conan " rocks', ['"', "conan", '"', "rocks"]),
    ("Café déjà-vu", ["café", "déjà", "-", "vu"]),
    ("ﬁne", ["fine"]),  # NFKC turns the ligature into two letters
    ("How far is it from Denver to Aspen ?", ["how", "far", "is", "it", "from", "denver", "to",
                                              "aspen", "?"]),
    ("", []),
])
def test_tokenize_splits_words_and_punctuation(text, tokens):
    assert tokenize(text) == tokens


def test_vocabulary_maps_a_word_seen_only_in_test_to_unk():
    train = ["a good film", "a bad film", "good acting"]
    test = ["a zebra film"]  # "zebra" never occurs in training
    vocabulary = Vocabulary.build(train)

    assert "zebra" not in vocabulary
    ids = vocabulary.encode(test[0])
    assert ids == [vocabulary.index["a"], 1, vocabulary.index["film"]]
    assert vocabulary.tokens[:2] == ["<pad>", "<unk>"]
    assert vocabulary.unknown_rate(test) == pytest.approx(1 / 3)


def test_vocabulary_orders_by_training_frequency_then_alphabetically():
    vocabulary = Vocabulary.build(["b a a", "c b a"], min_count=1)
    assert vocabulary.tokens == ["<pad>", "<unk>", "a", "b", "c"]
    assert Vocabulary.build(["b a a", "c b a"], min_count=2).tokens == ["<pad>", "<unk>", "a", "b"]


def test_encode_batch_pads_at_the_end_and_respects_lengths():
    vocabulary = Vocabulary.build(["one two three four five six"])
    batch = vocabulary.encode_batch(["one two", "one two three four five six", ""], max_length=4,
                                    min_length=5)
    assert batch.shape == (3, 5)  # longest (cut to 4) raised to the minimum of 5
    assert batch[0].tolist()[2:] == [0, 0, 0]
    assert batch[1].tolist()[:4] == vocabulary.encode("one two three four")
    assert batch[2].tolist() == [0] * 5


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_bytes(b"fine line\nan em \x97 dash in cp1252\n")
    with pytest.raises(CnnlabError, match=r"reviews\.txt, line 2, column 7.*not valid UTF-8"):
        read_lines(path)


def test_invalid_utf8_policies_cp1252_and_replace(tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_bytes("caf\u00e9 ok\n".encode() + b"caf\xe9 \x97 old\n")
    assert read_lines(path, invalid_utf8="cp1252") == ["café ok", "café \u2014 old"]
    assert read_lines(path, invalid_utf8="replace")[1] == "caf\ufffd \ufffd old"
    with pytest.raises(CnnlabError, match="not a policy"):
        read_lines(path, invalid_utf8="latin9")


def test_text_csv_reader_reads_quoted_fields_and_fixes_class_order(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text('id,text,label\n1,"good, really",pos\n2,awful,neg\n3,fine,pos\n')
    corpus = read_text_csv(path)
    assert corpus.classes == ["neg", "pos"]
    assert corpus.texts[0] == "good, really"
    assert corpus.labels == [1, 0, 1]
    assert corpus.origins[1] == "texts.csv:3"


@pytest.mark.parametrize("content, message", [
    ("words,label\nhi,a\n", r"no column 'text'"),
    ("text,label\nhi,a,extra\n", r"line 2: 3 fields where the header has 2"),
    ("text,label\nhi,\nho,b\n", r"line 2: empty label"),
    ("text,label\nhi,a\nho,a\n", r"only one class"),
    ("", r"is empty"),
])
def test_text_csv_reader_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(CnnlabError, match=message):
        read_text_csv(path)


def test_text_csv_with_fixed_classes_rejects_a_new_label(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("text,label\nhi,a\nho,c\n")
    with pytest.raises(CnnlabError, match=r"labels \['c'\] are not among"):
        read_text_csv(path, classes=["a", "b"])


def test_text_folder_reader_and_empty_class_error(tmp_path):
    for label, texts in {"ham": ["hello there", "see you"], "spam": ["win money now"]}.items():
        for n, text in enumerate(texts):
            (tmp_path / label).mkdir(exist_ok=True)
            (tmp_path / label / f"{n}.txt").write_text(text + "\n")
    corpus = read_text_folder(tmp_path)
    assert corpus.classes == ["ham", "spam"]
    assert min(zip(corpus.labels, corpus.texts)) == (0, "hello there")

    (tmp_path / "eggs").mkdir()
    with pytest.raises(CnnlabError, match=r"class folder .*eggs holds no \.txt files"):
        read_text_folder(tmp_path)


def test_stratified_folds_partition_every_example_once_and_repeat_with_the_seed():
    labels = [0] * 30 + [1] * 20
    folds = stratified_folds(labels, 10, seed=3)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(50))
    for train, test in folds:
        assert not set(train) & set(test)
        assert (np.asarray(labels)[test] == 1).sum() == 2  # proportions kept
    again = stratified_folds(labels, 10, seed=3)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))
    with pytest.raises(CnnlabError, match="folds=30"):
        stratified_folds(labels, 30)


def test_mr_reader_gives_balanced_utf8_sentences(shared_data):
    corpus = read_mr(shared_data("mr"))
    assert corpus.class_counts() == {"negative": 5331, "positive": 5331}
    assert any("é" in text for text in corpus.texts)  # cp1252 bytes were converted


def test_trec_reader_gives_coarse_labels_and_the_standard_split(shared_data):
    train, test = read_trec(shared_data("trec"))
    assert (len(train), len(test)) == (5452, 500)
    assert test.class_counts()["ABBR"] == 9
    assert test.texts[0] == "How far is it from Denver to Aspen ?"


def test_trec_reader_rejects_a_line_without_a_label(tmp_path):
    (tmp_path / "train_5500.label").write_text("NUM:dist How far ?\nno label here\n")
    (tmp_path / "TREC_10.label").write_text("NUM:dist How far ?\n")
    with pytest.raises(CnnlabError, match=r"train_5500\.label, line 2: expected 'COARSE:fine"):
        read_trec(tmp_path)
