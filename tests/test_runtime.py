"""The allocator setting that keeps freed tensor memory in the process (cifarkit.runtime).

What it gains is measured by ``benchmarks/train_step.py --default-malloc`` against the
same command without the flag; page-fault counts in a test were not deterministic.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

from cifarkit.runtime import keep_freed_memory

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>


class FakeLibc:
    def __init__(self, accepts: bool = True) -> None:
        self.calls: dict[int, int] = {}
        self.accepts = accepts

    def mallopt(self, param: int, value: int) -> int:
        self.calls[param] = value
        return int(self.accepts)


def test_raises_both_thresholds_above_a_training_steps_activations(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    assert keep_freed_memory() is True
    assert set(libc.calls) == {M_TRIM_THRESHOLD, M_MMAP_THRESHOLD}
    assert min(libc.calls.values()) >= 512 * 2**20  # a Lite0 step at 160 px allocates hundreds of MiB


def test_reports_a_refused_setting(monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc(accepts=False))
    assert keep_freed_memory() is False


def test_is_a_no_op_where_the_c_library_has_no_mallopt(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "/nonexistent/libc.so.6")
    assert keep_freed_memory() is False


def test_applies_on_this_machine_when_it_runs_glibc():
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
