"""benchmarks/bench_train.py: the median run and the rotated order its table rests on."""


import pytest

from tests.speed._benchmarks import benchmark_module


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_module("bench_train")


def test_median_run_keeps_the_middle_speed_not_the_middle_time_order(bench):
    runs = [{"images": 100, "seconds": s} for s in (4.0, 1.0, 2.0)]  # 25, 100, 50 images/s
    assert bench.median_run(runs)["seconds"] == 2.0
    # An even count keeps the lower middle run: the slower of the two central speeds.
    runs.append({"images": 100, "seconds": 0.5})  # 200 images/s
    assert bench.median_run(runs)["seconds"] == 2.0


def test_every_variant_goes_first_once_in_as_many_rounds(bench):
    firsts = [bench.rotated(bench.VARIANTS, r)[0] for r in range(len(bench.VARIANTS))]
    assert sorted(firsts) == sorted(bench.VARIANTS)
    for r in range(len(bench.VARIANTS)):
        assert sorted(bench.rotated(bench.VARIANTS, r)) == sorted(bench.VARIANTS)
