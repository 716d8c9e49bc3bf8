"""benchmarks/compare.py: the ratios, targets and tables, on fabricated timing results."""

import math
import sys

import pytest

from tests.speed._benchmarks import BENCHMARKS, benchmark_module


@pytest.fixture(scope="module")
def compare():
    yield from benchmark_module("compare")


def measured(compare, workload, pipeline, seconds, accuracy, images=1000, test_images=500):
    """A fabricated measurement: ``seconds`` per epoch, one entry per epoch."""
    return compare.Measurement(workload, pipeline, images=images, epochs=len(seconds),
                               train_seconds=sum(seconds), epoch_seconds=list(seconds),
                               test_accuracy=accuracy, test_images=test_images,
                               peak_memory_mib=512.0, cores=1.5)


@pytest.fixture
def results(compare):
    return [
        measured(compare, "lenet-augment", "cnnlab", [2.0, 1.0, 1.0], 0.40),
        measured(compare, "lenet-augment", "dataloader", [5.0, 4.0, 4.0], 0.41),
        measured(compare, "lenet-augment", "keras", [20.0, 6.0, 6.0], 0.30),
        measured(compare, "lenet", "cnnlab", [1.0], 0.45),
        measured(compare, "lenet", "dataloader", [1.5], 0.44),
        compare.Measurement("lenet", "keras", skipped="pip install failed: no network"),
        compare.Measurement("transfer", "cnnlab", skipped="no usable API"),
        measured(compare, "transfer", "dataloader", [3.0], 0.2),
    ]


def test_images_per_second_counts_every_epoch(compare):
    m = measured(compare, "lenet", "cnnlab", [4.0, 2.0, 2.0, 3.0], 0.5, images=1000)
    assert m.images_per_second == pytest.approx(4000 / 11)
    assert m.mean_epoch_seconds == pytest.approx(11 / 4)
    assert m.steady_epoch_seconds == pytest.approx(2.0)  # median of 2, 2, 3: not the first
    assert m.steady_images_per_second == pytest.approx(500.0)


@pytest.mark.parametrize("seconds, steady", [([5.0], math.nan), ([5.0, 1.0, 3.0], 2.0),
                                             ([9.0, 4.0], 4.0)])
def test_steady_epoch_is_the_median_after_the_first(compare, seconds, steady):
    m = measured(compare, "lenet", "cnnlab", seconds, 0.5)
    if math.isnan(steady):
        assert math.isnan(m.steady_epoch_seconds)
    else:
        assert m.steady_epoch_seconds == pytest.approx(steady)


def test_ratios_pair_cnnlab_with_each_pipeline_that_ran(compare, results):
    ratios = {(r.workload, r.versus): r for r in compare.compute_ratios(results)}
    # skipped Keras on lenet, and transfer without cnnlab, give no ratio
    assert set(ratios) == {("lenet-augment", "dataloader"), ("lenet-augment", "keras"),
                           ("lenet", "dataloader")}

    keras = ratios[("lenet-augment", "keras")]
    assert keras.speedup == pytest.approx((3000 / 4) / (3000 / 32))  # 8x over all epochs
    assert keras.steady_speedup == pytest.approx(6.0)
    assert keras.accuracy_delta == pytest.approx(0.10)
    assert keras.target_speedup == 3.0 and keras.speed_met and keras.accuracy_met

    loader = ratios[("lenet-augment", "dataloader")]
    assert loader.speedup == pytest.approx(13 / 4)
    assert loader.target_speedup == 1.0 and loader.speed_met
    # 0.40 vs 0.41 on 500 images each: within two standard errors, so "equal"
    expected_noise = 2 * math.sqrt(0.4 * 0.6 / 500 + 0.41 * 0.59 / 500)
    assert loader.accuracy_noise == pytest.approx(expected_noise)
    assert loader.accuracy_met

    plain = ratios[("lenet", "dataloader")]
    assert plain.target_speedup is None and plain.speed_met is None
    assert math.isnan(plain.steady_speedup)  # one epoch: no steady state
    assert plain.judged_speedup == pytest.approx(1.5)


def test_speed_target_must_hold_after_the_first_epoch_too(compare):
    # 4x over all epochs thanks to Keras' slow first epoch, but only 2x in the steady state.
    results = [measured(compare, "lenet-augment", "cnnlab", [1.0, 1.0], 0.5),
               measured(compare, "lenet-augment", "keras", [6.0, 2.0], 0.5)]
    [ratio] = compare.compute_ratios(results)
    assert ratio.speedup == pytest.approx(4.0) and ratio.steady_speedup == pytest.approx(2.0)
    assert ratio.judged_speedup == pytest.approx(2.0)
    assert ratio.speed_met is False


def test_accuracy_worse_beyond_noise_is_flagged(compare):
    results = [measured(compare, "lenet", "cnnlab", [1.0], 0.30, test_images=10000),
               measured(compare, "lenet", "keras", [2.0], 0.40, test_images=10000)]
    [ratio] = compare.compute_ratios(results)
    assert ratio.accuracy_delta == pytest.approx(-0.10)
    assert not ratio.accuracy_met
    assert "accuracy WORSE beyond noise" in compare.format_ratios([ratio])


@pytest.mark.parametrize("first, second, n1, n2, expected", [
    (0.5, 0.5, 100, 100, 2 * math.sqrt(0.005)),
    (0.9, 0.8, 1000, 500, 2 * math.sqrt(0.09 / 1000 + 0.16 / 500)),
    (1.0, 1.0, 10, 10, 0.0),
])
def test_accuracy_noise_is_two_standard_errors_of_the_difference(compare, first, second, n1,
                                                                  n2, expected):
    assert compare.accuracy_noise(first, second, n1, n2) == pytest.approx(expected)


def test_accuracy_noise_without_test_images_is_unknown(compare):
    assert math.isnan(compare.accuracy_noise(0.5, 0.5, 0, 10))


def test_results_table_shows_numbers_and_skip_reasons(compare, results):
    table = compare.format_results(results).splitlines()
    assert table[0].split()[:4] == ["workload", "pipeline", "images", "x"]
    keras = next(line for line in table if line.startswith("lenet-augment") and "keras" in line)
    # 1000 x 3 images in 32 s: 94 images/s; 10.7 s per epoch; 6.0 s steady; accuracy 0.3000
    assert keras.split()[2:] == ["1000", "x", "3", "94", "10.7", "6.0", "1.50", "512", "0.3000",
                                 "500"]
    skipped = next(line for line in table if line.startswith("lenet ") and "keras" in line)
    assert skipped.endswith("skipped: pip install failed: no network")
    single = next(line for line in table if line.startswith("lenet ") and "cnnlab" in line)
    assert single.split()[7] == "-"  # no steady epoch with one epoch


def test_ratio_table_states_targets_and_verdicts(compare, results):
    text = compare.format_ratios(compare.compute_ratios(results))
    keras = next(line for line in text.splitlines()
                 if line.startswith("lenet-augment") and "keras" in line)
    assert "8.00x" in keras and "6.00x" in keras and ">= 3x" in keras
    assert "speed target met" in keras and "accuracy equal or better" in keras
    assert "(no workload" in compare.format_ratios([])


@pytest.mark.parametrize("only, workloads, pipelines", [
    ([], ["lenet", "lenet-augment", "resnet18", "transfer"], ["cnnlab", "dataloader", "keras"]),
    (["lenet-augment"], ["lenet-augment"], ["cnnlab", "dataloader", "keras"]),
    (["keras", "cnnlab", "resnet18"], ["resnet18"], ["cnnlab", "keras"]),
])
def test_only_selects_workloads_and_pipelines(compare, only, workloads, pipelines):
    chosen_workloads, chosen_pipelines = compare.select(only)
    assert [w.name for w in chosen_workloads] == workloads
    assert chosen_pipelines == pipelines


def test_only_with_an_unknown_name_says_what_exists(compare):
    with pytest.raises(SystemExit, match="lenet-augment"):
        compare.select(["lenet-fast"])


@pytest.mark.parametrize("round_index, order", [
    (0, ["cnnlab", "dataloader", "keras"]), (1, ["dataloader", "keras", "cnnlab"]),
    (2, ["keras", "cnnlab", "dataloader"]), (3, ["cnnlab", "dataloader", "keras"])])
def test_each_pipeline_goes_first_in_turn(compare, round_index, order):
    assert compare.rotated(["cnnlab", "dataloader", "keras"], round_index) == order


def test_repeats_keep_the_run_with_the_median_speed(compare):
    runs = [measured(compare, "resnet18", "cnnlab", [seconds], 0.1) for seconds in (4.0, 1.0, 2.0)]
    chosen = compare.median_measurement(runs)
    assert chosen.train_seconds == 2.0
    assert "median of 3 runs (images/s 250, 500, 1,000)" in chosen.notes
    skipped = compare.Measurement("resnet18", "keras", skipped="no Keras")
    assert compare.median_measurement([skipped, skipped]).skipped == "no Keras"
    assert compare.median_measurement([skipped, runs[1]]).train_seconds == 1.0


def test_a_benchmark_without_its_data_exits_2_with_the_message_not_a_traceback(tmp_path):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "CNNLAB_DATA"}
    env["CNNLAB_CACHE"] = str(tmp_path / "cache")
    script = BENCHMARKS / "compare.py"
    done = subprocess.run([sys.executable, str(script), "--only", "lenet", "--only", "cnnlab",
                           "--quick"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "dataset 'cifar10' not found" in done.stderr and "CNNLAB_DATA" in done.stderr
    assert "Traceback" not in done.stderr


def test_cores_are_cpu_seconds_per_wall_second_children_included(compare):
    import os
    import subprocess

    first = compare.cpu_clock()
    # A child that spins for 0.3 s of CPU: its time counts once it is reaped.
    subprocess.run([sys.executable, "-c",
                    "import time\nt = time.process_time()\n"
                    "while time.process_time() - t < 0.3: pass"], check=True)
    second = compare.cpu_clock()
    assert second[0] - first[0] >= 0.3
    assert 0 < compare.cores_between(first, second) <= (os.cpu_count() or 1) + 0.1
