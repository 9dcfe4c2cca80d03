"""The machine a run is on: device, precision, CPU features, and process-wide settings (CPU, memory, the launcher).

Decided by the hardware, once, and said out loud, so the rest of cifarkit asks here instead of guessing. torch is
imported only inside the functions, so ``cifarkit --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from cifarkit.errors import CifarkitError

if TYPE_CHECKING:
    import torch

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # blocks up to 1 GiB are reused instead of mapped afresh

LAUNCHER_ENV = "CIFARKIT_LAUNCHER_PID"
"""The launcher's process id, which ``python -m cifarkit.launch`` gives its workers (torchrun itself gives none)."""
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# bfloat16 autocast against float32 on a CPU without native bf16 (benchmarks/train_step.py).
EMULATED_BF16_SLOWDOWN = "about 20x"


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed tensor memory instead of unmapping it; True if applied (False: not glibc).

    Above its mmap threshold glibc returns freed blocks to the kernel, so every training step page-faults and
    zero-fills its activations afresh (``benchmarks/train_step.py --default-malloc`` shows the cost); the price
    is that peak memory stays with the process. The CLI applies it; the API's computing functions too.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))


def env_int(name: str, default: int) -> int:
    """The whole number in ``$name`` (set by torchrun or ``python -m cifarkit.launch``), ``default`` when unset."""
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise CifarkitError(
            f"${name} is {value!r}, not a whole number; launch with torchrun or `python -m cifarkit.launch`, which "
            "set it"
        ) from None


@functools.cache  # once per process: training, then evaluation, set up
def stop_with_launcher() -> None:
    """Have this process, a worker that torchrun started, stop (SIGTERM) as soon as its launcher ends, however it ends.

    A launcher killed outright (SIGKILL, which it cannot pass on) would leave its workers training, orphaned, with
    the run's lock held. Linux signals at once (``PR_SET_PDEATHSIG``); elsewhere on POSIX a thread watches the
    parent (Windows is not covered). The launcher is ``$CIFARKIT_LAUNCHER_PID``, else the parent now.
    """
    if "LOCAL_RANK" not in os.environ or sys.platform == "win32":
        return
    launcher = env_int(LAUNCHER_ENV, os.getppid())
    os.environ.pop(LAUNCHER_ENV, None)  # read once: no process this one starts takes it for its own launcher
    if not (sys.platform == "linux" and _parent_death_signal(signal.SIGTERM)):
        threading.Thread(target=_watch_parent, args=(launcher,), name="cifarkit-launcher-watch", daemon=True).start()
    if os.getppid() != launcher:  # it ended before it could be watched: this process has a new parent already
        os.kill(os.getpid(), signal.SIGTERM)


def _parent_death_signal(sig: signal.Signals) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent ends; whether it agreed."""
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):  # no C library to call, as in a static or sandboxed Python
        return False
    return prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _watch_parent(launcher: int) -> None:
    """Send this process SIGTERM once its parent is no longer ``launcher`` (orphans get a new parent on POSIX)."""
    while os.getppid() == launcher:
        time.sleep(0.2)  # a system call five times a second: nothing beside training, and a stop within 0.2 s
    os.kill(os.getpid(), signal.SIGTERM)


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """The torch device ``name`` means here (``auto``: CUDA, then MPS, then CPU); one missing here is refused."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CifarkitError(f"--device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CifarkitError(
                f"--device {name}: this machine has no CUDA GPU visible to PyTorch; use --device cpu (or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CifarkitError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here; "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type == "mps" and not _mps_available():
        raise CifarkitError(f"--device {name}: Apple's MPS is not available here; use --device cpu (or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CifarkitError(f"--device {name}: cifarkit runs on cpu, cuda or mps; use --device auto")
    return device


def cpu_has_native_bf16() -> bool:
    """True when PyTorch reports native bfloat16 arithmetic on this CPU (AVX512-BF16 or AMX)."""
    features = cpu_features()
    return features["avx512_bf16"] or features["amx"]


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast is fast on ``device`` (a GPU that supports it, or a CPU with native bf16)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False  # MPS: float32 until measured


def resolve_bf16(setting: bool | str, device: torch.device) -> bool:
    """The precision a recipe's ``bf16`` field means on ``device``: ``auto`` is bf16 where it is native.

    An explicit ``True`` where bf16 is only emulated is kept, with a warning of how much slower it is likely to be.
    """
    if setting == "auto":
        return native_bf16(device)
    if setting is True and not native_bf16(device):
        kind = "this CPU has neither AVX512-BF16 nor AMX" if device.type == "cpu" else f"{device} lacks native bf16"
        warnings.warn(
            f"bf16=true but {kind}: bfloat16 is emulated, likely {EMULATED_BF16_SLOWDOWN} slower than "
            "float32; use bf16=auto (or false)",
            stacklevel=2,
        )
    return bool(setting)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, otherwise a no-op context."""
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def precision_name(bf16: bool) -> str:
    return "bfloat16 autocast" if bf16 else "float32"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> dict[str, bool]:
    """The instruction-set features that decide CPU speed here, as PyTorch sees them."""
    import torch

    cpu = torch.cpu
    probe = lambda name: bool(getattr(cpu, name, lambda: False)())  # noqa: E731
    return {
        "avx2": probe("_is_avx2_supported"),
        "avx512": probe("_is_avx512_supported"),
        "avx512_bf16": probe("_is_avx512_bf16_supported"),
        "amx": probe("_is_amx_tile_supported"),
    }


def cpu_kind() -> str:
    """One phrase for figures: ``native bf16 (AVX512-BF16)``, ``native bf16 (AMX)`` or ``float32 only (AVX2)``."""
    f = cpu_features()
    if f["amx"]:
        return "native bf16 (AMX)"
    if f["avx512_bf16"]:
        return "native bf16 (AVX512-BF16)"
    return f"float32 only ({'AVX-512' if f['avx512'] else 'AVX2' if f['avx2'] else 'no AVX2'}, no native bf16)"


def cpu_budget(cgroup_root: Path = Path("/sys/fs/cgroup")) -> tuple[int, str]:
    """How many CPUs this process may use, and why: its CPU affinity, capped by a cgroup CPU quota.

    A container limited to 2 CPUs on a 64-core host sees 64 cores, and a thread per core would be time-sliced
    onto 2 CPUs' quota. A fractional quota rounds down, never below 1.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
        why = [f"affinity {cpus}"]
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
        why = [f"{cpus} cores"]
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is None:
        why.append("no cgroup CPU quota")
    else:
        why.append(f"cgroup CPU quota {quota:g}")
        cpus = min(cpus, max(1, int(quota)))
    return cpus, ", ".join(why)


def _cgroup_cpu_quota(root: Path) -> float | None:
    """The cgroup CPU quota in CPUs (quota / period), or None where there is none or none can be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct"):  # cgroup v1: a quota of -1 is none
        try:
            quota = int((root / folder / "cpu.cfs_quota_us").read_text())
            period = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def default_threads() -> int:
    """PyTorch's own rule, one thread per physical core, within this process's share of the CPU budget.

    Under torchrun the processes on one machine share it (``LOCAL_WORLD_SIZE``). Read afresh each time, never from
    the current count, which a run under load may have lowered.
    """
    try:
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_processes = 1
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, min(cores, cpu_budget()[0] // local_processes))


def use_threads(count: int | None) -> int:
    """Set PyTorch's thread count to ``count``, or (None) :func:`default_threads`; returns it."""
    import torch

    torch.set_num_threads(count or default_threads())
    return torch.get_num_threads()


def threads_for(free_cpus: float, budget: int) -> int:
    """The thread count for ``free_cpus`` CPUs left free by other programs: rounded up from .6, within 1..budget.

    A thread that shares its core half the time holds up every operation of the others.
    """
    return max(1, min(budget, int(free_cpus + 0.4)))


class Threads:
    """The thread count of one training run: ``fixed`` (``--threads N``), or following other programs' load.

    OpenMP threads wait for each other after every operation, so a thread sharing its core with another program
    holds up all of them (``benchmarks/under_load.py``). Once a second, between steps, the count follows the CPUs
    other programs leave free. A fixed count never changes: only it repeats a run's numbers to the last bit.
    """

    WINDOW_S = 1.0

    def __init__(self, fixed: int | None = None) -> None:
        import torch

        self.fixed = fixed
        self.budget = fixed or default_threads()
        torch.set_num_threads(self.budget)
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            self.cpus = list(range(psutil.cpu_count() or 1))
        self.last = None if fixed else self._sample()

    @property
    def count(self) -> int:
        import torch

        return torch.get_num_threads()

    def describe(self) -> str:
        """The starting count and why, for the first lines a run prints."""
        if self.fixed:
            return f"threads {self.count}, fixed (--threads): the same seed repeats the same numbers"
        return (
            f"threads {self.count}, following the load of other programs (--threads N fixes the count, "
            "which repeats a run to the last bit)"
        )

    def _sample(self) -> tuple[float, float, float]:
        """(wall time, this process's CPU seconds, idle seconds of its CPUs)."""
        times = psutil.cpu_times(percpu=True)
        idle = sum(t.idle + getattr(t, "iowait", 0.0) for i, t in enumerate(times) if i in self.cpus)
        return time.monotonic(), time.process_time(), idle

    def follow_load(self) -> str | None:
        """Between steps: re-measure once a window has passed; the line to show if the count changed, else None."""
        import torch

        if self.last is None or time.monotonic() - self.last[0] < self.WINDOW_S:
            return None
        now = self._sample()
        wall, ours, idle = (b - a for a, b in zip(self.last, now))
        self.last = now
        free = (ours + idle) / wall
        count = threads_for(free, self.budget)
        if count == torch.get_num_threads():
            return None
        torch.set_num_threads(count)
        return f"threads {count}: {free:.1f} of {len(self.cpus)} CPUs free of other programs' work"


def matmul_gflops(bf16: bool, size: int = 2048, seconds: float = 0.5) -> float:
    """This machine's throughput in GFLOP/s, ``size`` x ``size`` matmuls for ``seconds``: to set beside timings."""
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # oneDNN picks and prepares its kernel on the first call
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def machine_record(threads: int | None = None) -> dict[str, Any]:
    """The machine a figure was measured on: CPU, cores, threads (``threads``, default the current), torch, matmuls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return {
            "cpu_model": cpu_model(),
            "cpu_kind": cpu_kind(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "matmul_gflops": {"float32": round(matmul_gflops(False), 1), "bfloat16": round(matmul_gflops(True), 1)},
        }
    finally:
        torch.set_num_threads(before)


def machine_info(device: str = "auto") -> dict[str, Any]:
    """Everything a figure needs beside it: versions, device, CPU model and kind, threads, precision."""
    import torch

    from cifarkit import __version__

    dev = pick_device(device)
    info: dict[str, Any] = {
        "cifarkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(dev),
        "cpu_model": cpu_model(),
        "cpu_kind": cpu_kind(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_budget": dict(zip(("cpus", "why"), cpu_budget())),
        "bf16_auto": resolve_bf16("auto", dev),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info
