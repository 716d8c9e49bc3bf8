"""Tables: a CSV with a target column, and preprocessing fitted on the training rows only.

:func:`read_table_csv` reads the file strictly (every row must have the
header's number of fields; the target must exist and be non-empty) and keeps
the feature cells as strings. :class:`TabularPreprocessor` then decides, from
the *training* rows only, what each column is and how to encode it:

- a column whose every non-missing training value parses as a number is
  numeric: missing values become the training median, then the column is
  standardised with the training mean and standard deviation;
- any other column is categorical: each category seen in training gets a
  code 1..K in order of training frequency; code 0 means "unknown" and is
  what a category never seen in training (or a missing value, unless
  missing was itself common in training) encodes to at test time;
- a categorical column whose training values are all distinct (a customer
  ID) carries no signal a model can generalise from and is dropped, with a
  log message; so is a column that is missing in every training row.

Missing means an empty cell or one of :data:`MISSING_TOKENS` after stripping
spaces (the churn table's ``TotalCharges`` is a single space for new customers).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab._util import CnnlabError
from cnnlab.data._resolve import find_dataset

log = logging.getLogger(__name__)

MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
UNKNOWN_CODE = 0


@dataclass
class TableData:
    """Rows of raw feature strings and integer targets.

    ``cells[i][j]`` is row i's value in column ``columns[j]``; ``targets[i]``
    indexes ``classes``; ``line_numbers[i]`` is row i's line in the source file.
    """

    columns: list[str]
    cells: list[list[str]]
    targets: np.ndarray
    classes: list[str]
    target: str
    source: str = ""
    line_numbers: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cells)

    def subset(self, indices) -> TableData:
        indices = [int(i) for i in indices]
        return TableData(
            columns=list(self.columns),
            cells=[self.cells[i] for i in indices],
            targets=self.targets[indices],
            classes=list(self.classes),
            target=self.target,
            source=self.source,
            line_numbers=[self.line_numbers[i] for i in indices] if self.line_numbers else [],
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.targets, minlength=len(self.classes))
        return {name: int(counts[i]) for i, name in enumerate(self.classes)}


def read_table_csv(
    path: str | os.PathLike,
    *,
    target: str,
    drop: Sequence[str] = (),
    classes: Sequence[str] | None = None,
    delimiter: str = ",",
) -> TableData:
    """Read a CSV with a header row; ``target`` names the label column.

    ``drop`` lists columns to ignore (IDs, leaks). Classes are the sorted
    distinct target values unless ``classes`` fixes them (how a test file
    is read with the training file's classes). Raises :class:`CnnlabError`
    naming the file and line for: an unknown target or drop column, a row
    with the wrong number of fields, an empty target value, a target value
    outside ``classes``, and a class with no rows.
    """
    path = Path(path)
    if path.is_dir():
        csvs = sorted(path.glob("*.csv"))
        if len(csvs) != 1:
            raise CnnlabError(f"{path} is a folder with {len(csvs)} CSV files; pass the file")
        path = csvs[0]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise CnnlabError(f"cannot read table {path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        line = text_line_of(path.read_bytes(), error.start)
        raise CnnlabError(f"{path}, line {line}: bytes are not valid UTF-8; re-save the file "
                          "as UTF-8") from None
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [name.strip() for name in next(reader, [])]
    if not header:
        raise CnnlabError(f"{path} is empty; expected a header row naming the columns")
    duplicates = sorted(name for name, n in Counter(header).items() if n > 1)
    if duplicates:
        raise CnnlabError(f"{path}: column names {duplicates} appear more than once in the header")
    if target not in header:
        raise CnnlabError(f"{path}: target column {target!r} is not in the header. "
                          f"Columns: {header}")
    missing_drops = sorted(set(drop) - set(header))
    if missing_drops:
        raise CnnlabError(f"{path}: columns to drop {missing_drops} are not in the header "
                          f"{header}")
    if target in drop:
        raise CnnlabError(f"{path}: the target {target!r} cannot also be dropped")
    target_at = header.index(target)
    keep = [j for j, name in enumerate(header) if name != target and name not in drop]
    if not keep:
        raise CnnlabError(f"{path}: no feature columns left besides the target {target!r}")

    cells, raw_targets, line_numbers = [], [], []
    for row in reader:
        number = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            raise CnnlabError(
                f"{path}, line {number}: {len(row)} fields where the header has {len(header)}; "
                "fix the row (quote values that contain the delimiter) or remove it"
            )
        value = row[target_at].strip()
        if value.lower() in MISSING_TOKENS:
            raise CnnlabError(f"{path}, line {number}: the target {target!r} is empty; "
                              "remove unlabelled rows before training")
        cells.append([row[j] for j in keep])
        raw_targets.append(value)
        line_numbers.append(number)
    if not cells:
        raise CnnlabError(f"{path} has a header but no data rows")

    if classes is None:
        classes = sorted(set(raw_targets))
    else:
        outside = sorted(set(raw_targets) - set(classes))
        if outside:
            raise CnnlabError(f"{path}: target values {outside} are not among the classes "
                              f"{list(classes)}")
    lookup = {name: i for i, name in enumerate(classes)}
    table = TableData(
        columns=[header[j] for j in keep],
        cells=cells,
        targets=np.array([lookup[value] for value in raw_targets], dtype=np.int64),
        classes=list(classes),
        target=target,
        source=str(path),
        line_numbers=line_numbers,
    )
    if len(table.classes) < 2:
        raise CnnlabError(f"{path}: the target {target!r} has only one value "
                          f"({table.classes}); a classifier needs two or more")
    return table


def text_line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def stratified_split(table: TableData, test_fraction: float = 0.2, *, seed: int = 0
                     ) -> tuple[TableData, TableData]:
    """A seeded stratified ``(train, test)`` split keeping class proportions.

    Raises :class:`CnnlabError` if a class has fewer than 2 rows (it cannot
    appear on both sides).
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise CnnlabError(f"test fraction must be in (0, 1), got {test_fraction}")
    counts = table.class_counts()
    small = {name: n for name, n in counts.items() if n < 2}
    if small:
        raise CnnlabError(f"{table.source}: classes {small} have fewer than 2 rows; a stratified "
                          "split needs each class on both sides. Remove or merge them.")
    indices = np.arange(len(table))
    train, test = train_test_split(indices, test_size=test_fraction, random_state=seed,
                                   stratify=table.targets)
    return table.subset(np.sort(train)), table.subset(np.sort(test))


def _is_missing(value: str) -> bool:
    return value.strip().lower() in MISSING_TOKENS


def _parse_number(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclass
class EncodedTable:
    """Model-ready arrays: standardised numerics and categorical codes (0 = unknown)."""

    numeric: np.ndarray  # float32 [N, n_numeric]
    categorical: np.ndarray  # int64 [N, n_categorical]
    targets: np.ndarray  # int64 [N]

    def packed(self) -> np.ndarray:
        """One float32 ``[N, n_numeric + n_categorical]`` matrix: numerics, then codes.

        Codes are small integers, exact in float32; the tabular models split
        the matrix again. One tensor fits the trainer's single-input datasets.
        """
        return np.concatenate([self.numeric, self.categorical.astype(np.float32)], axis=1)


class TabularPreprocessor:
    """Column typing, imputation, scaling and category codes, fitted on training rows only.

    >>> pre = TabularPreprocessor().fit(train)     # learns from train only
    >>> encoded_train = pre.transform(train)
    >>> encoded_test = pre.transform(test)         # unseen categories -> code 0

    ``categorical`` forces columns to be categorical (e.g. a numeric zip
    code); ``numeric`` forces columns to be numeric (a non-number cell then
    counts as missing).
    """

    def __init__(self, *, categorical: Sequence[str] = (), numeric: Sequence[str] = ()) -> None:
        both = sorted(set(categorical) & set(numeric))
        if both:
            raise CnnlabError(f"columns {both} cannot be both categorical and numeric")
        self.force_categorical = set(categorical)
        self.force_numeric = set(numeric)
        self.columns: list[str] = []
        self.numeric_columns: list[str] = []
        self.categorical_columns: list[str] = []
        self.dropped_columns: dict[str, str] = {}
        self.medians: dict[str, float] = {}
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}
        self.categories: dict[str, list[str]] = {}
        self.fitted_rows = 0

    @property
    def category_sizes(self) -> list[int]:
        """Embedding table sizes: known categories plus the unknown code 0."""
        return [len(self.categories[name]) + 1 for name in self.categorical_columns]

    def fit(self, train: TableData) -> TabularPreprocessor:
        """Learn everything from ``train`` (and nothing else); returns ``self``."""
        if len(train) == 0:
            raise CnnlabError("cannot fit preprocessing on an empty training table")
        unknown = sorted((self.force_categorical | self.force_numeric) - set(train.columns))
        if unknown:
            raise CnnlabError(f"columns {unknown} are not features of {train.source}; "
                              f"features: {train.columns}")
        self.columns = list(train.columns)
        self.fitted_rows = len(train)
        for j, name in enumerate(train.columns):
            values = [row[j] for row in train.cells]
            present = [value.strip() for value in values if not _is_missing(value)]
            if not present:
                self.dropped_columns[name] = "missing in every training row"
                continue
            numbers = [_parse_number(value) for value in present]
            is_numeric = name in self.force_numeric or (
                name not in self.force_categorical and all(n is not None for n in numbers)
            )
            if is_numeric:
                column = np.array([n for n in numbers if n is not None], dtype=np.float64)
                if len(column) == 0:
                    self.dropped_columns[name] = "no numeric value in training rows"
                    continue
                self.numeric_columns.append(name)
                median = float(np.median(column))
                filled = np.array([_parse_number(v) if not _is_missing(v) else None
                                   for v in values], dtype=object)
                filled = np.array([median if v is None else v for v in filled], dtype=np.float64)
                self.medians[name] = median
                self.means[name] = float(filled.mean())
                # A constant column would divide by zero; scale 1 leaves it at 0.
                self.stds[name] = float(filled.std()) or 1.0
            else:
                counts = Counter(value if not _is_missing(value) else "<missing>"
                                 for value in (v.strip() for v in values))
                if len(counts) == len(values) and len(values) > 20:
                    self.dropped_columns[name] = "all values distinct (an identifier)"
                    continue
                self.categorical_columns.append(name)
                self.categories[name] = sorted(counts, key=lambda value: (-counts[value], value))
        for name, reason in self.dropped_columns.items():
            log.info("dropping column %r: %s", name, reason)
        if not self.numeric_columns and not self.categorical_columns:
            raise CnnlabError(f"{train.source}: no usable feature columns "
                              f"(dropped: {self.dropped_columns})")
        return self

    def transform(self, table: TableData) -> EncodedTable:
        """Encode ``table`` with the fitted statistics; its columns must match the training ones."""
        if not self.columns:
            raise CnnlabError("TabularPreprocessor.transform called before fit")
        if list(table.columns) != self.columns:
            missing = sorted(set(self.columns) - set(table.columns))
            extra = sorted(set(table.columns) - set(self.columns))
            raise CnnlabError(f"{table.source}: columns differ from the training table "
                              f"(missing {missing}, extra {extra})")
        at = {name: j for j, name in enumerate(table.columns)}
        N = len(table)
        numeric = np.zeros((N, len(self.numeric_columns)), dtype=np.float32)
        for k, name in enumerate(self.numeric_columns):
            unparsable = 0
            for i, row in enumerate(table.cells):
                value = row[at[name]]
                number = None if _is_missing(value) else _parse_number(value)
                if number is None:
                    unparsable += not _is_missing(value)
                    number = self.medians[name]
                numeric[i, k] = (number - self.means[name]) / self.stds[name]
            if unparsable:
                log.warning("%s: %d values of numeric column %r are not numbers; imputed with "
                            "the training median %.4g", table.source, unparsable, name,
                            self.medians[name])
        categorical = np.zeros((N, len(self.categorical_columns)), dtype=np.int64)
        for k, name in enumerate(self.categorical_columns):
            codes = {value: code for code, value in enumerate(self.categories[name], start=1)}
            for i, row in enumerate(table.cells):
                value = row[at[name]].strip()
                if _is_missing(value):
                    value = "<missing>"
                categorical[i, k] = codes.get(value, UNKNOWN_CODE)
        return EncodedTable(numeric=numeric, categorical=categorical,
                            targets=np.asarray(table.targets, dtype=np.int64))

    def describe(self) -> dict:
        """The fitted preprocessing as plain data (for a run's config file)."""
        return {
            "numeric": {name: {"median": self.medians[name], "mean": self.means[name],
                               "std": self.stds[name]} for name in self.numeric_columns},
            "categorical": {name: self.categories[name] for name in self.categorical_columns},
            "dropped": dict(self.dropped_columns),
            "fitted_rows": self.fitted_rows,
        }


def read_churn(root: str | os.PathLike = "churn") -> TableData:
    """The IBM Telco churn table (7,043 customers), target ``Churn`` with classes No/Yes.

    ``customerID`` is dropped; ``TotalCharges`` is blank for 11 new
    customers and is imputed by the preprocessing like any missing number.
    """
    folder = find_dataset(root)
    path = folder / "WA_Fn-UseC_-Telco-Customer-Churn.csv" if folder.is_dir() else folder
    return read_table_csv(path, target="Churn", drop=("customerID",))
