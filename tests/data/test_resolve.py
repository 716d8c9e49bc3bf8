"""Dataset resolution: explicit path, then $CNNLAB_DATA, then the cache; one clear error."""

import pytest

from cnnlab._util import CnnlabError
from cnnlab.data import find_dataset


def test_an_existing_path_wins_over_everything(tmp_path, monkeypatch):
    direct = tmp_path / "mine"
    direct.mkdir()
    env_root = tmp_path / "env"
    (env_root / "mine").mkdir(parents=True)
    monkeypatch.setenv("CNNLAB_DATA", str(env_root))
    assert find_dataset(str(direct)) == direct


def test_a_name_resolves_under_cnnlab_data_with_its_known_folder(tmp_path, monkeypatch):
    (tmp_path / "env" / "cifar10-jpeg").mkdir(parents=True)
    (tmp_path / "cache" / "datasets" / "cifar10-jpeg").mkdir(parents=True)
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    assert find_dataset("cifar10") == tmp_path / "env" / "cifar10-jpeg"


def test_the_cache_is_used_when_cnnlab_data_lacks_the_dataset(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    (tmp_path / "cache" / "datasets" / "cifar10-jpeg").mkdir(parents=True)
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    assert find_dataset("cifar10") == tmp_path / "cache" / "datasets" / "cifar10-jpeg"


def test_an_explicit_root_comes_before_cnnlab_data(tmp_path, monkeypatch):
    (tmp_path / "explicit" / "text-mr").mkdir(parents=True)
    (tmp_path / "env" / "text-mr").mkdir(parents=True)
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    found = find_dataset("text-mr", explicit_root=tmp_path / "explicit")
    assert found == tmp_path / "explicit" / "text-mr"


def test_missing_dataset_error_lists_every_place_tried_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CnnlabError) as caught:
        find_dataset("cifar10")
    message = str(caught.value)
    assert str(tmp_path / "env" / "cifar10-jpeg") in message
    assert str(tmp_path / "cache" / "datasets" / "cifar10-jpeg") in message
    assert "CNNLAB_DATA" in message and "cifar10" in message


def test_unset_cnnlab_data_is_reported_as_not_set(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CnnlabError, match=r"\$CNNLAB_DATA: not set"):
        find_dataset("nothing-here")


def test_recording_collects_the_datasets_found_inside_the_block(tmp_path, monkeypatch):
    from cnnlab.data import recording_datasets

    (tmp_path / "cifar10-jpeg").mkdir()
    own = tmp_path / "my shapes"
    own.mkdir()
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    find_dataset("cifar10")  # outside any recording: not collected anywhere
    with recording_datasets() as outer:
        find_dataset("cifar10")
        find_dataset(tmp_path / "cifar10-jpeg")  # the same folder by path: still one entry
        with recording_datasets() as inner:
            find_dataset(own)
        with pytest.raises(CnnlabError):
            find_dataset("churn")  # not found: nothing recorded
    find_dataset(own)  # after the block: the dictionary no longer changes
    assert outer == {"cifar10": (tmp_path / "cifar10-jpeg").resolve(), "my shapes": own.resolve()}
    assert inner == {"my shapes": own.resolve()}
