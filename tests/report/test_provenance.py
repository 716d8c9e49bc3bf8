"""Dataset checksums (contents, cached by listing) and the machine description."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from cnnlab._util import CnnlabError
from cnnlab.report import provenance
from cnnlab.report.provenance import (
    data_source,
    dataset_checksum,
    gather_data_sources,
    machine_info,
)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "0001.jpg").write_bytes(b"\xff\xd8cat")
    (root / "train" / "dog.jpg").write_bytes(b"\xff\xd8dog")
    (root / "README.md").write_text("tiny set\n")
    return root


def test_checksum_is_sha256_of_a_manifest_of_contents(dataset):
    # The documented format, computed independently: "<sha256>  <size>  <path>\n" sorted by path.
    lines = []
    for rel in ["README.md", "train/cat/0001.jpg", "train/dog.jpg"]:
        payload = (dataset / rel).read_bytes()
        lines.append(f"{hashlib.sha256(payload).hexdigest()}  {len(payload)}  {rel}\n")
    expected = "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()

    assert dataset_checksum(dataset) == expected


def test_checksum_follows_contents_not_location_or_times(dataset, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(dataset, copy)
    os.utime(copy / "README.md", (1, 1))

    assert dataset_checksum(copy) == dataset_checksum(dataset)


@pytest.mark.parametrize("change", ["edit", "rename", "add", "remove"])
def test_checksum_changes_with_the_data(dataset, change):
    before = dataset_checksum(dataset)
    if change == "edit":
        (dataset / "train" / "dog.jpg").write_bytes(b"\xff\xd8DOG")  # same size
    elif change == "rename":
        (dataset / "train" / "dog.jpg").rename(dataset / "train" / "dog2.jpg")
    elif change == "add":
        (dataset / "extra.txt").write_text("")
    else:
        (dataset / "README.md").unlink()

    assert dataset_checksum(dataset) != before


def test_second_call_uses_the_cache_without_reading_files(dataset, monkeypatch):
    first = dataset_checksum(dataset)

    def fail(*args):
        raise AssertionError("file contents were hashed again")

    monkeypatch.setattr(provenance, "_contents_checksum", fail)
    assert dataset_checksum(dataset) == first
    with pytest.raises(AssertionError, match="hashed again"):
        dataset_checksum(dataset, cache=False)


def test_single_file_and_description(dataset):
    source = data_source(dataset / "README.md")

    assert source["files"] == 1 and source["bytes"] == len("tiny set\n")
    assert source["checksum"].startswith("sha256:") and len(source["checksum"]) == 71


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(CnnlabError, match="no such file or folder"):
        dataset_checksum(tmp_path / "nope")


def test_gather_data_sources_merges_studies_and_keeps_disagreements():
    sources = gather_data_sources([
        ("a", {"data_checksums": {"cifar10": "sha256:1"}}),
        ("b", {"data_checksums": {"cifar10": {"checksum": "sha256:1", "files": 3}}}),
        ("c", {"data_checksums": {"cifar10": "sha256:2"}}),
        ("d", {}),
    ])

    assert sources["cifar10"] == {"checksum": "sha256:1", "files": 3, "studies": ["a", "b"]}
    assert sources["cifar10 (c)"] == {"checksum": "sha256:2", "studies": ["c"]}


def test_machine_info_names_cpu_cores_and_gpus():
    info = machine_info()

    assert info["cpu"] and info["cpu_cores"] >= 1
    assert isinstance(info["gpus"], list)
