"""The default thread count: cores that other processes leave idle, not counting our own work."""

import pytest

from cnnlab import _util


class FakeClock:
    """A machine whose load average, wall clock and this process's CPU time the test sets."""

    def __init__(self, monkeypatch, cores=2):
        self.now, self.cpu, self.load = 1000.0, 0.0, 0.0
        monkeypatch.setattr(_util.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(_util, "_process_cpu_seconds", lambda: self.cpu)
        monkeypatch.setattr(_util.os, "getloadavg", lambda: (self.load, self.load, self.load))
        monkeypatch.setattr(_util.os, "sched_getaffinity", lambda pid: set(range(cores)),
                            raising=False)
        monkeypatch.setattr(_util, "_CPU_SAMPLES", [])
        _util.own_busy_cores()  # the import-time sample

    def work(self, seconds, busy_cores, load):
        """This process keeps ``busy_cores`` busy for ``seconds``; the load reads ``load``."""
        self.now += seconds
        self.cpu += seconds * busy_cores
        self.load = load


def test_idle_machine_gives_every_core(monkeypatch):
    FakeClock(monkeypatch)
    assert _util.default_threads() == 2


def test_our_own_previous_run_is_not_mistaken_for_other_work(monkeypatch):
    clock = FakeClock(monkeypatch)
    clock.work(120, busy_cores=2, load=2.0)  # one training run on both cores, nothing else
    assert _util.own_busy_cores() == pytest.approx(2.0)
    assert _util.default_threads() == 2  # the raw load average alone would have said 0 idle


def test_another_busy_process_still_makes_us_back_off(monkeypatch):
    clock = FakeClock(monkeypatch)
    clock.work(120, busy_cores=1, load=2.0)  # we used one core, someone else the other
    assert _util.default_threads() == 1
    clock.work(120, busy_cores=0, load=2.0)  # we were idle; two other processes were busy
    assert _util.default_threads() == 1  # never fewer than one


def test_rate_comes_from_about_the_last_minute(monkeypatch):
    clock = FakeClock(monkeypatch)
    clock.work(600, busy_cores=0, load=0.0)  # a long idle start
    _util.own_busy_cores()
    clock.work(60, busy_cores=2, load=2.0)  # then a minute of work on both cores
    # Averaged since import the rate would be 0.18 core and the load would look foreign.
    assert _util.own_busy_cores() == pytest.approx(2.0)
    assert _util.default_threads() == 2


def test_environment_and_explicit_counts_override(monkeypatch):
    FakeClock(monkeypatch)
    monkeypatch.setenv("CNNLAB_THREADS", "1")
    import torch

    before = torch.get_num_threads()
    try:
        assert _util.set_threads(None) == 1
        assert _util.set_threads(2) == 2
        with pytest.raises(_util.CnnlabError, match="threads must be >= 1"):
            _util.set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("env,value", [("CNNLAB_MALLOC_TUNING", "0"),
                                       ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1"),
                                       ("MALLOC_ARENA_MAX", "2")])
def test_allocator_tuning_steps_aside_when_told_or_when_the_user_tunes_malloc(monkeypatch, env,
                                                                              value):
    monkeypatch.setattr(_util, "_allocator_tuned", None)
    monkeypatch.setenv(env, value)
    assert _util.tune_allocator() is False


def test_allocator_tuning_applies_once_on_glibc(monkeypatch):
    import platform
    import sys

    for name in [n for n in __import__("os").environ if n.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("CNNLAB_MALLOC_TUNING", raising=False)
    monkeypatch.setattr(_util, "_allocator_tuned", None)
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert _util.tune_allocator() is glibc
    monkeypatch.setenv("CNNLAB_MALLOC_TUNING", "0")
    assert _util.tune_allocator() is glibc  # decided once per process
