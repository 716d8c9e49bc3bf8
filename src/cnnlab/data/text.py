"""Sentence data: reading labelled text, a tokeniser, a vocabulary, and CV folds.

Everything a sentence CNN needs before the model: lines read robustly from
files (with a clear error for bytes that are not UTF-8), one tokeniser used
everywhere, a :class:`Vocabulary` built from the *training* texts only (a word
seen only in the test split maps to ``<unk>``, so the test set never leaks
into the model's input space), and seeded stratified folds for corpora that
have no official split (MR).

Readers:

- :func:`read_mr` - the movie-review polarity sentences (``rt-polarity.pos/.neg``);
- :func:`read_trec` - TREC questions with their 6 coarse labels, train and test;
- :func:`read_text_csv` - a user's CSV with a text column and a label column;
- :func:`read_text_folder` - a user's folder with one sub-folder of ``.txt`` files per class.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cnnlab._util import CnnlabError
from cnnlab.data._resolve import find_dataset

log = logging.getLogger(__name__)

InvalidUtf8 = Literal["error", "cp1252", "replace"]
"""What to do with a line that is not valid UTF-8.

``"error"`` (default) raises :class:`CnnlabError` naming the file, the line
number and the offending bytes. ``"cp1252"`` decodes such a line as
Windows-1252, the encoding most old English corpora (MR among them) were
written in; bytes cp1252 leaves undefined become U+FFFD. ``"replace"`` keeps
the line and puts U+FFFD in place of each bad byte. Valid UTF-8 lines are
decoded as UTF-8 under every policy.
"""

PAD = "<pad>"
UNK = "<unk>"

# A token is a run of letters/digits, optionally with an apostrophe suffix
# ("he's", "n't" stay whole as the MR/TREC authors tokenised them), or a single
# other non-space character (punctuation is its own token).
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|'[^\W_]+|[^\w\s]|_", re.UNICODE)


@dataclass
class TextCorpus:
    """Labelled texts: ``labels[i]`` indexes ``classes`` for ``texts[i]``.

    ``origins[i]`` says where text i came from (``file:line``) so that an
    error or an odd prediction can be traced to its source.
    """

    texts: list[str]
    labels: list[int]
    classes: list[str]
    source: str = ""
    origins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextCorpus:
        """The texts at ``indices``, keeping the class list (so label ids stay the same)."""
        indices = [int(i) for i in indices]
        origins = [self.origins[i] for i in indices] if self.origins else []
        return TextCorpus(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            classes=list(self.classes),
            source=self.source,
            origins=origins,
        )

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(index, 0) for index, name in enumerate(self.classes)}


# ---------------------------------------------------------------- tokeniser


def tokenize(text: str) -> list[str]:
    """Split ``text`` into lower-case word and punctuation tokens.

    Unicode is NFKC-normalised first (so a typographic ligature or a
    full-width letter becomes its plain form); accented letters are kept.
    Words keep internal apostrophes (``don't``, ``he's``); every other
    punctuation mark is a token of its own.

    >>> tokenize("It's a MOVIE -- sort of!")
    ["it's", 'a', 'movie', '-', '-', 'sort', 'of', '!']
    """
    text = unicodedata.normalize("NFKC", text).lower()
    return _TOKEN.findall(text)


class Vocabulary:
    """Token <-> id mapping built from training texts only.

    Id 0 is ``<pad>`` and id 1 is ``<unk>``; real tokens follow in order of
    decreasing training frequency (ties broken alphabetically, so the
    mapping is deterministic). A token seen fewer than ``min_count`` times in
    training, or one never seen there (for example a word that occurs only
    in the test split), encodes as ``<unk>``.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        if list(tokens[:2]) != [PAD, UNK]:
            raise ValueError("a vocabulary starts with <pad>, <unk>")
        self.tokens: list[str] = list(tokens)
        self.index: dict[str, int] = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(
        cls, train_texts: Iterable[str], *, min_count: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Count tokens over ``train_texts`` and keep those seen ``min_count`` times or more.

        ``max_size`` caps the number of real tokens (the most frequent are kept).
        Pass the training split only; building from all data leaks test words.
        """
        if min_count < 1:
            raise CnnlabError(f"min_count must be >= 1, got {min_count}")
        counts: Counter[str] = Counter()
        for text in train_texts:
            counts.update(tokenize(text))
        kept = sorted(
            (token for token, n in counts.items() if n >= min_count),
            key=lambda token: (-counts[token], token),
        )
        if max_size is not None:
            kept = kept[:max_size]
        return cls([PAD, UNK, *kept])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; unknown tokens become 1 (``<unk>``)."""
        unknown = self.index[UNK]
        return [self.index.get(token, unknown) for token in tokenize(text)]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] for i in ids if i != 0]

    def encode_batch(self, texts: Sequence[str], max_length: int, *, min_length: int = 1):
        """Token ids of ``texts`` as a ``[N, L]`` int64 tensor, padded with 0 at the end.

        ``L`` is the longest encoded text, capped at ``max_length`` (longer texts
        are cut at the end) and raised to ``min_length`` (a convolution of width
        5 needs at least 5 positions). An empty text becomes all padding.
        """
        import torch

        encoded = [self.encode(text)[:max_length] for text in texts]
        length = max([min_length, *(len(ids) for ids in encoded)])
        out = torch.zeros((len(encoded), length), dtype=torch.int64)
        for row, ids in enumerate(encoded):
            if ids:
                out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out

    def unknown_rate(self, texts: Iterable[str]) -> float:
        """Fraction of tokens in ``texts`` that encode as ``<unk>``."""
        total = unknown = 0
        for text in texts:
            ids = self.encode(text)
            total += len(ids)
            unknown += sum(1 for i in ids if i == 1)
        return unknown / total if total else 0.0


# ------------------------------------------------------------ robust reading


def read_lines(path: str | os.PathLike, *, invalid_utf8: InvalidUtf8 = "error") -> list[str]:
    """Lines of a text file without their line ends, decoded as UTF-8.

    A UTF-8 byte-order mark at the start is dropped. See :data:`InvalidUtf8`
    for what happens to a line that is not UTF-8; with the default a user
    learns exactly which file, line and bytes are wrong instead of getting a
    ``UnicodeDecodeError`` from deep inside a loop.
    """
    path = Path(path)
    if invalid_utf8 not in ("error", "cp1252", "replace"):
        raise CnnlabError(
            f"invalid_utf8={invalid_utf8!r} is not a policy; use 'error', 'cp1252' or 'replace'"
        )
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CnnlabError(f"cannot read text file {path}: {error.strerror or error}") from error
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines: list[str] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        lines.append(_decode_line(raw, path, number, invalid_utf8))
    return lines


def _decode_line(raw: bytes, path: Path, number: int, policy: InvalidUtf8) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        if policy == "cp1252":
            return raw.decode("cp1252", errors="replace")
        if policy == "replace":
            return raw.decode("utf-8", errors="replace")
        bad = raw[error.start : error.end]
        column = len(raw[: error.start].decode("utf-8", errors="replace")) + 1
        raise CnnlabError(
            f"{path}, line {number}, column {column}: bytes {bad!r} are not valid UTF-8. "
            "Re-save the file as UTF-8, or read it with invalid_utf8='cp1252' "
            "(Windows-1252, the usual encoding of old English corpora) or "
            "invalid_utf8='replace' (keep the line with U+FFFD in place of bad bytes)."
        ) from None


# ------------------------------------------------------------------- readers


def read_mr(root: str | os.PathLike = "text-mr", *, invalid_utf8: InvalidUtf8 = "error"
            ) -> TextCorpus:
    """The MR movie-review polarity corpus: 5,331 negative and 5,331 positive sentences.

    ``root`` is a folder holding ``rt-polarity.neg`` and ``rt-polarity.pos`` or
    a dataset name for :func:`cnnlab.data.find_dataset`. Classes are
    ``["negative", "positive"]``. The shared copy is UTF-8 (converted from
    the original cp1252); for the original release files pass
    ``invalid_utf8="cp1252"``. Empty lines are skipped. There is no official
    split: use :func:`stratified_folds` (10 folds as in Kim 2014).
    """
    folder = find_dataset(root)
    texts: list[str] = []
    labels: list[int] = []
    origins: list[str] = []
    for label, name in enumerate(("rt-polarity.neg", "rt-polarity.pos")):
        path = folder / name
        if not path.is_file():
            raise CnnlabError(f"MR file {path} is missing; expected rt-polarity.neg and .pos in "
                              f"{folder}")
        for number, line in enumerate(read_lines(path, invalid_utf8=invalid_utf8), start=1):
            if line.strip():
                texts.append(line.strip())
                labels.append(label)
                origins.append(f"{name}:{number}")
    corpus = TextCorpus(texts, labels, ["negative", "positive"], source=str(folder),
                        origins=origins)
    _check_classes(corpus, str(folder))
    return corpus


TREC_COARSE = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def read_trec(root: str | os.PathLike = "text-trec", *, invalid_utf8: InvalidUtf8 = "error"
              ) -> tuple[TextCorpus, TextCorpus]:
    """TREC question classification with its 6 coarse classes: ``(train, test)``.

    Train is ``train_5500.label`` (5,452 questions), test is ``TREC_10.label``
    (500). Each line is ``COARSE:fine question``; the fine label is dropped.
    A line without that shape raises :class:`CnnlabError` naming file and line.
    """
    folder = find_dataset(root)
    splits = []
    for name in ("train_5500.label", "TREC_10.label"):
        path = folder / name
        if not path.is_file():
            raise CnnlabError(f"TREC file {path} is missing; expected train_5500.label and "
                              f"TREC_10.label in {folder}")
        texts, labels, origins = [], [], []
        for number, line in enumerate(read_lines(path, invalid_utf8=invalid_utf8), start=1):
            if not line.strip():
                continue
            label, _, question = line.partition(" ")
            coarse = label.split(":", 1)[0]
            if ":" not in label or coarse not in TREC_COARSE or not question.strip():
                raise CnnlabError(
                    f"{path}, line {number}: expected 'COARSE:fine question' with COARSE in "
                    f"{TREC_COARSE}, got {line[:60]!r}"
                )
            texts.append(question.strip())
            labels.append(TREC_COARSE.index(coarse))
            origins.append(f"{name}:{number}")
        splits.append(TextCorpus(texts, labels, list(TREC_COARSE), source=str(path),
                                 origins=origins))
    return splits[0], splits[1]


def read_text_csv(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    classes: Sequence[str] | None = None,
    invalid_utf8: InvalidUtf8 = "error",
) -> TextCorpus:
    """A user's CSV file with one labelled text per row.

    The header row must name ``text_column`` and ``label_column``; other
    columns are ignored. Classes are the sorted distinct labels unless
    ``classes`` fixes their order (then any other label is an error, which
    is how a test file is read with its training file's classes).

    Raises :class:`CnnlabError` for a missing column, a row with the wrong
    number of fields, an empty text or label, and a class with no rows.
    """
    path = Path(path)
    lines = read_lines(path, invalid_utf8=invalid_utf8)
    reader = csv.reader(io.StringIO("\n".join(lines) + "\n"))
    header = [name.strip() for name in next(reader, [])]
    if not any(header):
        raise CnnlabError(f"{path} is empty; expected a header row with columns "
                          f"{text_column!r} and {label_column!r}")
    for column in (text_column, label_column):
        if column not in header:
            raise CnnlabError(f"{path}: no column {column!r}; the header has {header}. "
                              "Pass text_column=/label_column= to name the right ones.")
    text_at, label_at = header.index(text_column), header.index(label_column)
    texts, raw_labels, origins = [], [], []
    for row in reader:
        number = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CnnlabError(f"{path}, line {number}: {len(row)} fields where the header has "
                              f"{len(header)}; quote fields that contain commas")
        text, label = row[text_at].strip(), row[label_at].strip()
        if not text or not label:
            empty = "text" if not text else "label"
            raise CnnlabError(f"{path}, line {number}: empty {empty}; every row needs both")
        texts.append(text)
        raw_labels.append(label)
        origins.append(f"{path.name}:{number}")
    corpus = _label_corpus(texts, raw_labels, origins, classes, str(path))
    _check_classes(corpus, str(path))
    return corpus


def read_text_folder(
    path: str | os.PathLike,
    *,
    suffixes: Sequence[str] = (".txt",),
    classes: Sequence[str] | None = None,
    invalid_utf8: InvalidUtf8 = "error",
) -> TextCorpus:
    """A user's folder with one sub-folder per class, each holding text files.

    Each file is one example (its lines joined by spaces). Class names are
    the sub-folder names, sorted, unless ``classes`` fixes them. A class
    folder with no file ending in ``suffixes`` is an error, because an empty
    class would silently give a classifier that can never predict it.
    """
    path = Path(path)
    if not path.is_dir():
        raise CnnlabError(f"text folder {path} does not exist or is not a folder")
    folders = sorted(child for child in path.iterdir() if child.is_dir()
                     and not child.name.startswith("."))
    if not folders:
        raise CnnlabError(f"{path} has no class sub-folders; expected {path}/<class>/<file>.txt")
    names = [folder.name for folder in folders]
    if classes is not None:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise CnnlabError(f"{path}: class folders {unknown} are not among the classes "
                              f"{list(classes)}")
        names_order = list(classes)
    else:
        names_order = names
    texts, labels, origins = [], [], []
    for folder in folders:
        files = sorted(file for file in folder.iterdir()
                       if file.is_file() and file.suffix.lower() in suffixes)
        if not files:
            raise CnnlabError(f"class folder {folder} holds no {'/'.join(suffixes)} files; "
                              "every class needs at least one example")
        for file in files:
            text = " ".join(line.strip() for line in read_lines(file, invalid_utf8=invalid_utf8))
            if not text.strip():
                log.warning("skipping empty text file %s", file)
                continue
            texts.append(text.strip())
            labels.append(names_order.index(folder.name))
            origins.append(str(file.relative_to(path)))
    corpus = TextCorpus(texts, labels, names_order, source=str(path), origins=origins)
    _check_classes(corpus, str(path), allow_missing=classes is not None)
    return corpus


def _label_corpus(texts: list[str], raw_labels: list[str], origins: list[str],
                  classes: Sequence[str] | None, source: str) -> TextCorpus:
    if classes is None:
        classes = sorted(set(raw_labels))
    else:
        unknown = sorted(set(raw_labels) - set(classes))
        if unknown:
            raise CnnlabError(f"{source}: labels {unknown} are not among the training classes "
                              f"{list(classes)}")
    lookup = {name: i for i, name in enumerate(classes)}
    return TextCorpus(texts, [lookup[label] for label in raw_labels], list(classes),
                      source=source, origins=origins)


def _check_classes(corpus: TextCorpus, source: str, *, allow_missing: bool = False) -> None:
    if not corpus.texts:
        raise CnnlabError(f"{source} holds no texts")
    if allow_missing:
        return
    empty = [name for name, count in corpus.class_counts().items() if count == 0]
    if empty:
        raise CnnlabError(f"{source}: classes {empty} have no examples")
    if len(corpus.classes) < 2:
        raise CnnlabError(f"{source}: only one class ({corpus.classes}); a classifier needs two "
                          "or more")


# -------------------------------------------------------------------- splits


def stratified_folds(labels: Sequence[int], folds: int = 10, *, seed: int = 0
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified k-fold split: a list of ``(train_indices, test_indices)``.

    Every example is in exactly one test fold; class proportions are kept in
    each fold. The same ``seed`` gives the same folds on every machine.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    if folds < 2 or folds > smallest:
        raise CnnlabError(f"folds={folds} needs 2 <= folds <= the smallest class size "
                          f"({smallest})")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(train, test) for train, test in splitter.split(np.zeros(len(labels)), labels)]


def stratified_holdout(labels: Sequence[int], fraction: float, *, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split into ``(keep_indices, held_out_indices)``, ``fraction`` held out."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise CnnlabError(f"hold-out fraction must be in (0, 1), got {fraction}")
    indices = np.arange(len(labels))
    keep, held = train_test_split(indices, test_size=fraction, random_state=seed,
                                  stratify=np.asarray(labels))
    return np.sort(keep), np.sort(held)
