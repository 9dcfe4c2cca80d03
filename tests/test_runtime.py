"""cifarkit.runtime: the device and precision chosen by the hardware, and the allocator setting.

What it gains is measured by ``benchmarks/train_step.py --default-malloc`` against the
same command without the flag; page-fault counts in a test were not deterministic.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import subprocess
import sys
import time

import psutil
import pytest
import torch

from cifarkit import runtime
from cifarkit.errors import CifarkitError
from cifarkit.runtime import keep_freed_memory
from cli_runner import run_cli

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


# --- the variables torchrun sets --------------------------------------------------------------


def test_launch_variables_are_whole_numbers_or_a_clear_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert runtime.env_int("WORLD_SIZE", 1) == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert runtime.env_int("WORLD_SIZE", 1) == 4
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(CifarkitError, match=r"^\$WORLD_SIZE is 'four', not a whole number; launch with torchrun"):
        runtime.env_int("WORLD_SIZE", 1)


# --- device and precision, chosen by the hardware ---------------------------------------------


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    assert runtime.pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert runtime.pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.pick_device("auto") == torch.device("cuda")


def test_unavailable_or_unknown_device_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CifarkitError, match="no CUDA GPU.*--device cpu"):
        runtime.pick_device("cuda")
    with pytest.raises(CifarkitError, match="not a device name"):
        runtime.pick_device("gpu0")
    assert runtime.pick_device("cpu") == torch.device("cpu")


def test_auto_precision_is_bf16_only_where_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_bf16("auto", cpu) is False
    assert runtime.resolve_bf16(False, cpu) is False
    with pytest.warns(UserWarning, match="emulated.*20x slower"):
        assert runtime.resolve_bf16(True, cpu) is True
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_bf16("auto", cpu) is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_bf16("auto", torch.device("cuda")) is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.resolve_bf16("auto", torch.device("cuda")) is False
    assert runtime.resolve_bf16("auto", torch.device("mps")) is False


def test_native_bf16_follows_the_cpu_features_pytorch_reports(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert runtime.cpu_has_native_bf16() is False
    assert "no native bf16" in runtime.cpu_kind()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert runtime.cpu_has_native_bf16() is True and runtime.cpu_kind() == "native bf16 (AMX)"


def test_autocast_runs_bf16_only_when_asked():
    layer = torch.nn.Linear(4, 2)
    x = torch.ones(1, 4)
    with runtime.autocast(torch.device("cpu"), True):
        assert layer(x).dtype == torch.bfloat16
    with runtime.autocast(torch.device("cpu"), False):
        assert layer(x).dtype == torch.float32


def test_machine_info_names_what_a_figure_needs():
    info = runtime.machine_info("cpu")
    assert {
        "cifarkit",
        "torch",
        "device",
        "cpu_model",
        "cpu_kind",
        "cpu_features",
        "cores",
        "torch_threads",
        "bf16_auto",
    } <= set(info)
    assert set(info["cpu_features"]) == {"avx2", "avx512", "avx512_bf16", "amx"}
    assert info["bf16_auto"] is runtime.cpu_has_native_bf16()


@pytest.mark.parametrize(
    ("files", "cpus", "why"),
    [
        ({}, None, "no cgroup CPU quota"),
        ({"cpu.max": "max 100000\n"}, None, "no cgroup CPU quota"),
        ({"cpu.max": "150000 100000\n"}, 1, "cgroup CPU quota 1.5"),  # 1.5 CPUs: 2 threads would be throttled
        ({"cpu.max": "50000 100000\n"}, 1, "cgroup CPU quota 0.5"),  # never below one thread
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, "no cgroup CPU quota"),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1, "quota 1"),
    ],
)
def test_the_cpu_budget_is_the_affinity_capped_by_a_cgroup_quota(tmp_path, files, cpus, why):
    from cifarkit.runtime import cpu_budget

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    budget, reason = cpu_budget(tmp_path)
    assert budget == (affinity if cpus is None else min(affinity, cpus)) and why in reason
    assert f"affinity {affinity}" in reason


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux call")
def test_the_command_line_uses_only_the_cpus_it_may(capsys, restore_threads):
    """As under `taskset -c 0 cifarkit ...`: the command reads the one CPU it may use (here this process, whose CPUs
    are restored after: another Python would spend seconds importing torch only to read them)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        code, out, err = run_cli(capsys, "info", "--json", "--no-estimate")
    finally:
        os.sched_setaffinity(0, allowed)
    assert code == 0, err
    info = json.loads(out)
    assert info["torch_threads"] == 1 and info["cpu_budget"]["cpus"] == 1


def test_bars_in_a_log_file_write_a_line_every_few_seconds(capsys):
    from cifarkit.progress import LOG_INTERVAL_S, progress_bar

    with progress_bar(range(20_000), desc="decoding") as bar:  # stderr is captured here: not a terminal
        assert bar.mininterval == LOG_INTERVAL_S
        for _ in bar:
            pass
    err = capsys.readouterr().err
    assert "20000/20000" in err and err.count("\r") <= 3, err  # the start and the end, not 20,000 refreshes


@pytest.fixture
def restore_threads():
    """Tests that set the process's thread count put it back: other tests run in this process after them."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("free", "budget", "threads"), [(2.0, 2, 2), (1.6, 2, 2), (1.5, 2, 1), (0.2, 2, 1), (0.0, 4, 1), (7.9, 4, 4)]
)
def test_threads_follow_the_cpus_other_programs_leave_free(free, budget, threads):
    assert runtime.threads_for(free, budget) == threads


def test_the_thread_count_follows_measured_free_cpu_time(monkeypatch, restore_threads):
    """Free CPUs = this process's CPU time + its CPUs' idle time, per second; measured once a window."""
    clock = {"wall": 100.0, "cpu": 10.0}
    idle = [0.0, 0.0]  # seconds each CPU has been idle
    monkeypatch.setattr(
        runtime,
        "time",
        type(
            "Clock",
            (),
            {"monotonic": staticmethod(lambda: clock["wall"]), "process_time": staticmethod(lambda: clock["cpu"])},
        ),
    )
    monkeypatch.setattr(
        runtime.psutil, "cpu_times", lambda percpu: [type("T", (), {"idle": i, "iowait": 0.0})() for i in idle]
    )
    monkeypatch.setattr(runtime, "default_threads", lambda: 2)
    threads = runtime.Threads()
    threads.cpus = [0, 1]
    assert threads.count == 2 and threads.fixed is None

    clock["wall"] += 0.5  # within the window: nothing measured yet
    assert threads.follow_load() is None and torch.get_num_threads() == 2
    clock["wall"] += 0.5
    clock["cpu"] += 1.0  # this process used one CPU, the other CPU was never idle: another program took it
    message = threads.follow_load()
    assert threads.count == 1 and message.startswith("threads 1: 1.0 of 2 CPUs free")

    clock["wall"] += 1.0
    clock["cpu"] += 1.0
    idle[1] += 1.0  # the other program stopped: CPU 1 idle the whole second
    assert threads.follow_load().startswith("threads 2: 2.0 of 2 CPUs free") and threads.count == 2

    clock["wall"] += 1.0
    clock["cpu"] += 1.9
    idle[0] += 0.05
    idle[1] += 1.05  # still free: the count stays, nothing to say
    assert threads.follow_load() is None and threads.count == 2


@pytest.mark.skipif(len(psutil.Process().cpu_affinity() or []) < 2, reason="needs 2 CPUs")
def test_other_programs_on_every_cpu_take_the_threads_down(restore_threads):
    """The machine's real CPU times: a busy loop on each CPU this process may use. (Going back up is the fake
    test's: on the real machine it depends on what else it runs.)"""
    threads = runtime.Threads()
    threads.budget = 2
    threads.WINDOW_S = 0.25  # a quarter of a second of busy CPUs is 25 clock ticks of each: plenty to measure
    torch.set_num_threads(2)
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in threads.cpus]
    try:
        time.sleep(threads.WINDOW_S + 0.5)
        threads.last = threads._sample()  # a window with every CPU busy from the start
        time.sleep(threads.WINDOW_S + 0.1)
        assert threads.follow_load() is not None and threads.count == 1
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def test_a_fixed_thread_count_is_never_adapted(monkeypatch, restore_threads):
    threads = runtime.Threads(1)
    monkeypatch.setattr(runtime.time, "monotonic", lambda: 1e12)  # any window has passed
    assert threads.follow_load() is None and threads.count == 1 and "fixed" in threads.describe()


def test_the_default_count_comes_back_after_a_run_lowered_it(monkeypatch, restore_threads):
    """No ratchet: the default is read from the machine, not from the count a run under load left behind."""
    monkeypatch.setattr(runtime, "cpu_budget", lambda: (2, "affinity 2"))
    monkeypatch.setattr(runtime.psutil, "cpu_count", lambda logical=True: 2)
    torch.set_num_threads(1)  # what the last run in this process may have left
    assert runtime.default_threads() == 2 and runtime.Threads().count == 2


def test_processes_launched_together_share_the_cpu_budget(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_budget", lambda: (4, "affinity 4"))
    monkeypatch.setattr(runtime.psutil, "cpu_count", lambda logical=True: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert runtime.default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert runtime.default_threads() == 1
