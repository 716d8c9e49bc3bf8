"""Tables: strict CSV reading, and preprocessing fitted on the training rows only."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab._util import CnnlabError
from cnnlab.data.tabular import (
    TabularPreprocessor,
    read_churn,
    read_table_csv,
    stratified_split,
)

HEADER = "id,age,plan,spend,churn\n"


def _csv(tmp_path, body: str, name: str = "table.csv"):
    path = tmp_path / name
    path.write_text(HEADER + body)
    return path


def test_preprocessing_statistics_come_from_the_training_rows_only(tmp_path):
    train = read_table_csv(_csv(tmp_path, "1,20,basic,10,no\n2,40,gold,,yes\n3,60,basic,30,no\n"),
                           target="churn", drop=["id"])
    test = read_table_csv(_csv(tmp_path, "4,1000,basic,5000,no\n5,,gold,20,yes\n", "test.csv"),
                          target="churn", drop=["id"], classes=train.classes)
    pre = TabularPreprocessor().fit(train)

    assert pre.numeric_columns == ["age", "spend"] and pre.categorical_columns == ["plan"]
    # age: mean 40, population std of (20, 40, 60); spend: missing -> train median 20
    assert pre.means["age"] == pytest.approx(40.0)
    assert pre.stds["age"] == pytest.approx(np.std([20, 40, 60]))
    assert pre.medians["spend"] == pytest.approx(20.0)
    assert pre.means["spend"] == pytest.approx(20.0)  # (10 + 20 imputed + 30) / 3

    encoded = pre.transform(test)
    # Test values are scaled with the training statistics, never refitted.
    assert encoded.numeric[0, 0] == pytest.approx((1000 - 40) / np.std([20, 40, 60]))
    assert encoded.numeric[1, 0] == pytest.approx(0.0)  # missing age -> train median 40 -> 0
    before = pre.describe()
    pre.transform(test)
    assert pre.describe() == before  # transforming does not learn


def test_category_unseen_in_training_gets_the_unknown_code(tmp_path):
    train = read_table_csv(_csv(tmp_path, "1,20,basic,10,no\n2,40,gold,20,yes\n3,60,basic,30,no\n"),
                           target="churn", drop=["id"])
    test = read_table_csv(_csv(tmp_path, "4,30,platinum,5,no\n5,30,gold,5,yes\n6,30,,5,no\n",
                               "test.csv"), target="churn", drop=["id"], classes=train.classes)
    pre = TabularPreprocessor().fit(train)
    codes = pre.transform(test).categorical[:, 0].tolist()

    assert pre.categories["plan"] == ["basic", "gold"]  # by training frequency
    assert pre.category_sizes == [3]  # unknown + 2 known
    assert codes == [0, 2, 0]  # platinum unseen, gold = 2, missing (never in train) unseen
    packed = pre.transform(test).packed()
    assert packed.shape == (3, 3) and packed.dtype == np.float32


def test_identifier_columns_are_dropped_and_forced_categories_respected(tmp_path):
    rows = "".join(f"id{n},{20 + n % 3},{n % 2},{n}.5,{'yes' if n % 2 else 'no'}\n"
                   for n in range(30))
    table = read_table_csv(_csv(tmp_path, rows), target="churn")
    pre = TabularPreprocessor(categorical=["plan"]).fit(table)
    assert "id" in pre.dropped_columns
    assert pre.categorical_columns == ["plan"] and pre.numeric_columns == ["age", "spend"]


@pytest.mark.parametrize("body, target, message", [
    ("1,20,basic,10,no\n", "Churn", r"target column 'Churn' is not in the header"),
    ("1,20,basic,10,no\n2,30,gold,no\n", "churn", r"line 3: 4 fields where the header has 5"),
    ("1,20,basic,10,no\n2,30,gold,5,\n", "churn", r"line 3: the target 'churn' is empty"),
    ("1,20,basic,10,no\n2,30,gold,5,no\n", "churn", r"has only one value"),
    ("", "churn", r"has a header but no data rows"),
])
def test_reader_errors_name_file_line_and_fix(tmp_path, body, target, message):
    with pytest.raises(CnnlabError, match=message):
        read_table_csv(_csv(tmp_path, body), target=target)


def test_class_with_a_single_row_cannot_be_split(tmp_path):
    table = read_table_csv(_csv(tmp_path, "1,20,a,1,no\n2,30,b,2,no\n3,40,c,3,yes\n"),
                           target="churn")
    with pytest.raises(CnnlabError, match=r"classes \{'yes': 1\} have fewer than 2 rows"):
        stratified_split(table, 0.5)


def test_test_file_with_a_new_target_value_is_an_error(tmp_path):
    path = _csv(tmp_path, "1,20,a,1,no\n2,30,b,2,maybe\n")
    with pytest.raises(CnnlabError, match=r"target values \['maybe'\] are not among"):
        read_table_csv(path, target="churn", classes=["no", "yes"])


def test_churn_split_is_stratified_and_totalcharges_blanks_are_imputed(shared_data):
    table = read_churn(shared_data("churn"))
    assert len(table) == 7043 and table.classes == ["No", "Yes"]
    train, test = stratified_split(table, 0.2, seed=0)
    assert len(test) == 1409
    assert abs(train.targets.mean() - test.targets.mean()) < 0.005
    pre = TabularPreprocessor().fit(train)
    assert "TotalCharges" in pre.numeric_columns
    assert np.isfinite(pre.transform(test).numeric).all()
