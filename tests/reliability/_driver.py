"""A training process for the kill tests: ``python _driver.py RUN_DIR DATA.npz EPOCHS [MODE]``.

MODE ``resume`` continues from RUN_DIR's checkpoint; ``slow-checkpoint``
makes every checkpoint write stall half-way (after writing part of the temp
file), so a test can kill the process in the middle of a write; ``slow-cache``
decodes an image folder (DATA is then a folder) one slow file at a time.
"""

import sys
import time

import torch


def dataset(path):
    import numpy as np

    from cnnlab.data import ArrayDataset

    with np.load(path) as arrays:
        return ArrayDataset(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]),
                            ["a", "b"], mean=(0.5,) * 3, std=(0.25,) * 3)


def main():
    run_dir, data_path, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else ""
    torch.set_num_threads(1)
    if mode == "slow-cache":
        import cnnlab.data.images as images

        original = images._decode_one

        def slow(*args, **kwargs):
            time.sleep(0.05)
            return original(*args, **kwargs)

        images._decode_one = slow
        images.load_image_folder(data_path, progress=False)
        print("cache-done", flush=True)
        return

    from cnnlab.augment import build_augment
    from cnnlab.models import build_model
    from cnnlab.train import Trainer, TrainConfig

    if mode == "slow-checkpoint":
        original_save = torch.save

        def stalling_save(obj, path, *args, **kwargs):
            original_save(obj, path, *args, **kwargs)
            with open(path, "r+b") as handle:
                handle.truncate(max(1, handle.seek(0, 2) // 2))  # half-written
            print("checkpoint-stalled", flush=True)
            time.sleep(60)

        torch.save = stalling_save

    data = dataset(data_path)
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=2, widths=(8, 16), depth=1)
    config = TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, seed=0, fit_subset=32,
                         threads=1)
    trainer = Trainer(model, config, train=data, val=data, augment=build_augment("keras"),
                      run_dir=run_dir)
    trainer.fit(resume=mode == "resume")
    print("done", flush=True)


if __name__ == "__main__":
    main()
