"""Reading image folders: the decode cache, bad files, conversions, splits."""

import os
import time

import numpy as np
import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.data import limit, load_image_folder, load_images, split_validation
from tests.conftest import write_image


def test_folder_decodes_to_uint8_nchw_with_sorted_class_names(image_folder, isolated_cache):
    data = load_image_folder(image_folder, progress=False)
    assert data.inputs.dtype == torch.uint8
    assert tuple(data.inputs.shape) == (12, 3, 8, 8)
    assert data.classes == ["bright", "dark"]
    assert data.class_counts() == [6, 6]
    # Independent check of one pixel against PIL.
    from PIL import Image

    first = np.array(Image.open(image_folder / "bright" / "0.png"))
    assert torch.equal(data.inputs[0].permute(1, 2, 0), torch.from_numpy(first))


def test_second_load_reads_the_cache(image_folder, isolated_cache):
    load_image_folder(image_folder, progress=False)
    entries = list((isolated_cache / "images").iterdir())
    assert len(entries) == 1 and (entries[0] / "done.json").exists()
    again = load_image_folder(image_folder, progress=False)
    assert again.meta.get("cache") == str(entries[0])


def test_cache_is_invalidated_when_a_file_changes(image_folder, isolated_cache):
    before = load_image_folder(image_folder, progress=False)
    changed = image_folder / "dark" / "0.png"
    write_image(changed, np.full((8, 8, 3), 7, dtype=np.uint8))
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    after = load_image_folder(image_folder, progress=False)
    assert "cache" not in after.meta  # decoded again, not read from the stale cache
    index = 6  # dark/0.png comes first in the dark class
    assert torch.all(after.inputs[index] == 7)
    assert not torch.equal(before.inputs[index], after.inputs[index])
    assert len(list((isolated_cache / "images").iterdir())) == 2


def test_cache_killed_before_completion_is_rebuilt(image_folder, isolated_cache):
    load_image_folder(image_folder, progress=False)
    entry = next((isolated_cache / "images").iterdir())
    (entry / "done.json").unlink()  # what a kill before the final write leaves
    (entry / "images.npy").write_bytes(b"garbage")
    data = load_image_folder(image_folder, progress=False)
    assert tuple(data.inputs.shape) == (12, 3, 8, 8)


@pytest.mark.parametrize("content, expected", [
    (b"", "empty"),
    (b"\xff\xd8\xff\xe0 this is not really a jpeg", "could not be decoded"),
])
def test_corrupt_files_give_an_error_naming_the_file(image_folder, isolated_cache, content,
                                                     expected):
    bad = image_folder / "dark" / "broken.jpg"
    bad.write_bytes(content)
    with pytest.raises(CnnlabError) as caught:
        load_image_folder(image_folder, progress=False)
    assert str(bad) in str(caught.value) and expected in str(caught.value)
    assert "--skip-bad" in str(caught.value)


def test_truncated_png_gives_an_error_naming_the_file(image_folder, isolated_cache):
    source = image_folder / "dark" / "1.png"
    truncated = image_folder / "dark" / "truncated.png"
    truncated.write_bytes(source.read_bytes()[:60])
    with pytest.raises(CnnlabError, match="truncated.png"):
        load_image_folder(image_folder, progress=False)


def test_skip_bad_skips_and_lists_what_it_skipped(image_folder, isolated_cache):
    (image_folder / "dark" / "notes.txt").write_text("not an image")
    data = load_image_folder(image_folder, skip_bad=True, progress=False)
    assert len(data) == 12
    assert [s["file"] for s in data.meta["skipped"]] == [str(image_folder / "dark" / "notes.txt")]


def test_empty_class_folder_is_a_clear_error(image_folder, isolated_cache):
    (image_folder / "empty").mkdir()
    with pytest.raises(CnnlabError, match=r"class folder .*empty is empty"):
        load_image_folder(image_folder, progress=False)


def test_grayscale_rgba_and_16_bit_images_are_converted_to_rgb(image_folder, isolated_cache):
    write_image(image_folder / "dark" / "gray.png", np.full((8, 8), 40, dtype=np.uint8))
    write_image(image_folder / "dark" / "rgba.png", np.full((8, 8, 4), 30, dtype=np.uint8))
    from PIL import Image

    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    sixteen.save(image_folder / "dark" / "wide.png")
    data = load_image_folder(image_folder, progress=False)
    assert tuple(data.inputs.shape[1:]) == (3, 8, 8)
    names = sorted(p.name for p in (image_folder / "dark").iterdir())
    position = {name: 6 + i for i, name in enumerate(names)}
    assert torch.all(data.inputs[position["gray.png"]] == 40)
    assert torch.all(data.inputs[position["rgba.png"]] == 30)
    assert torch.all(data.inputs[position["wide.png"]] == 255)  # full-scale 16 bit -> 255


def test_mixed_sizes_need_a_resize_and_work_with_one(image_folder, isolated_cache):
    write_image(image_folder / "dark" / "big.png", np.zeros((16, 12, 3), dtype=np.uint8))
    with pytest.raises(CnnlabError, match="--resize"):
        load_image_folder(image_folder, progress=False)
    data = load_image_folder(image_folder, size=8, progress=False)
    assert tuple(data.inputs.shape) == (13, 3, 8, 8)


def test_class_names_with_spaces_and_non_ascii_letters_are_kept(tmp_path, isolated_cache):
    for name in ("tabby cat", "café"):
        write_image(tmp_path / "d" / name / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    assert load_image_folder(tmp_path / "d", progress=False).classes == ["café", "tabby cat"]


def test_symlink_loop_does_not_hang(image_folder, isolated_cache):
    (image_folder / "dark" / "loop").symlink_to(image_folder / "dark", target_is_directory=True)
    data = load_image_folder(image_folder, progress=False)
    assert len(data) == 12


def test_npz_in_keras_layout_loads(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (5, 6, 6, 3), dtype=np.uint8)
    y = np.array([[0], [1], [0], [1], [1]])
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    data = load_images(path, "train")
    assert tuple(data.inputs.shape) == (5, 3, 6, 6)
    assert torch.equal(data.inputs[1].permute(1, 2, 0), torch.from_numpy(x[1]))
    assert data.targets.tolist() == [0, 1, 0, 1, 1]


def test_npz_without_the_split_names_its_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(CnnlabError, match="x_train"):
        load_images(path, "train")


def test_validation_split_is_deterministic_stratified_and_disjoint():
    from cnnlab.data import ArrayDataset

    data = ArrayDataset(torch.arange(100).view(100, 1), torch.arange(100) % 4, list("abcd"))
    train_a, val_a = split_validation(data, 0.2, seed=3)
    train_b, val_b = split_validation(data, 0.2, seed=3)
    assert torch.equal(val_a.inputs, val_b.inputs)
    assert len(val_a) == 20 and val_a.class_counts() == [5, 5, 5, 5]
    assert set(train_a.inputs.flatten().tolist()).isdisjoint(val_a.inputs.flatten().tolist())
    _, val_c = split_validation(data, 0.2, seed=4)
    assert not torch.equal(val_a.inputs, val_c.inputs)


def test_limit_is_a_deterministic_stratified_subset():
    from cnnlab.data import ArrayDataset

    data = ArrayDataset(torch.arange(60).view(60, 1), torch.arange(60) % 3, list("abc"))
    small = limit(data, 12, seed=0)
    assert small.class_counts() == [4, 4, 4]
    assert torch.equal(small.inputs, limit(data, 12, seed=0).inputs)
    with pytest.raises(CnnlabError, match="--limit"):
        limit(data, 0)


def test_real_cifar10_test_split_reads_from_shared_data(shared_data):
    data = load_images(shared_data / "cifar10-jpeg" / "test", progress=False)
    assert tuple(data.inputs.shape) == (10000, 3, 32, 32)
    assert data.classes[0] == "airplane" and data.class_counts() == [1000] * 10


def test_archive_members_outside_the_target_are_refused(tmp_path):
    import io
    import tarfile

    from cnnlab.data.images import safe_extract

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        payload = b"overwritten"
        member = tarfile.TarInfo("../escaped.txt")
        member.size = len(payload)
        bundle.addfile(member, io.BytesIO(payload))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(CnnlabError, match="unsafe member"):
        safe_extract(archive, target)
    assert not (tmp_path / "escaped.txt").exists()


def test_a_safe_archive_extracts(tmp_path):
    import io
    import tarfile

    from cnnlab.data.images import safe_extract

    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as bundle:
        member = tarfile.TarInfo("folder/a.txt")
        member.size = 2
        bundle.addfile(member, io.BytesIO(b"hi"))
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "folder" / "a.txt").read_text() == "hi"
