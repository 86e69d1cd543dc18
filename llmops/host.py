"""The host a timing or a run came from: CPU model, the ISA flags that change kernels, cores, memory bandwidth.

Machines of the same kind differ in silicon (some CPUs have `avx512_bf16`/VNNI/AMX, many only AVX2), and the
same code runs several times faster or slower across them. So every timing (benchmarks, the run summary,
the train step's lineage tags) names its host with `describe()`. The static part (`fingerprint()`) reads
/proc/cpuinfo; memory bandwidth is measured (a short torch copy, 1 thread and all threads) once per host
and cached in the state dir under the fingerprint's key, beside other per-host measurements (the precision
probe of llmops.precision). The key includes the environment variables that cap the ISA torch/oneDNN use
(`ONEDNN_MAX_CPU_ISA`, `ATEN_CPU_CAPABILITY`): with them set the same silicon behaves like another host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

# The CPU flags that change which kernels run (matmul precision, int8 dot products): one list for the engine
# cache key (serving/engine_build/store.py), the precision choice and every recorded fingerprint.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 dot products in hardware (else oneDNN emulates them)
# Environment variables that cap the ISA the libraries use: part of the fingerprint (they change the timings).
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
CACHE_SUBDIR = "host"
BANDWIDTH_MIB = 128  # per buffer: well beyond the last-level cache of the CPUs we meet


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """Every flag of the first CPU in /proc/cpuinfo (`flags` on x86, `Features` on ARM)."""
    info = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str:
    info = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def isa_flags(flags: set[str]) -> list[str]:
    """The ISA_FLAGS present, in ISA_FLAGS order."""
    return [f for f in ISA_FLAGS if f in flags]


def native_bf16(flags: set[str]) -> bool:
    """True where the CPU multiplies bf16 in hardware (avx512_bf16 or AMX-BF16)."""
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def cpu_hardware(cpuinfo: str | None = None) -> str:
    """`cpu-<arch>-<ISA flags that change kernels>`, e.g. cpu-x86_64-avx2+avx512f+avx512_bf16 (engine cache key)."""
    present = isa_flags(cpu_flags(cpuinfo))
    return f"cpu-{platform.machine() or 'unknown'}-" + ("+".join(present) or "baseline")


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask: a container's or taskset's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


def fingerprint(cpuinfo: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """What identifies this host for timings, without measuring anything (microseconds)."""
    env = os.environ if env is None else env
    flags = cpu_flags(cpuinfo)
    limits = {k: env[k] for k in ISA_ENV if env.get(k)}
    fp: dict[str, Any] = {
        "cpu": cpu_model(cpuinfo),
        "arch": platform.machine() or "unknown",
        "isa": "+".join(isa_flags(flags)) or "baseline",
        "isa_limits": limits,
        "native_bf16": native_bf16(flags),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count() or 1,
        "torch": _torch_version(),
    }
    blob = json.dumps({k: fp[k] for k in ("cpu", "arch", "isa", "isa_limits", "cores", "torch")}, sort_keys=True)
    fp["key"] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return fp


def isa_tag(fp: dict[str, Any]) -> str:
    """The `host.isa` tag: the flags, plus any env cap (two runs on the same CPU with and without it differ)."""
    limits = ",".join(f"{k}={v}" for k, v in sorted(fp.get("isa_limits", {}).items()))
    return fp["isa"] + (f" (limited: {limits})" if limits else "")


# --- the per-host cache --------------------------------------------------------------------------------


def cache_path(cache_dir: Path, fp: dict[str, Any]) -> Path:
    return Path(cache_dir) / CACHE_SUBDIR / f"{fp['key']}.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside `path`: Ray workers on one host may fill the same cache at once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached(cache_dir: Path | None, fp: dict[str, Any], name: str, measure: Callable[[], Any]) -> Any:
    """`measure()` once per host fingerprint and `name`, kept in `<cache_dir>/host/<key>.json`
    (no cache_dir: measured every call). A measurement that fails raises and is not cached."""
    if cache_dir is None:
        return measure()
    path = cache_path(cache_dir, fp)
    try:
        return _cached_at(path, fp, name, measure)
    except OSError:  # a read-only or missing state dir (a pod's image): measure, uncached
        return measure()


def _cached_at(path: Path, fp: dict[str, Any], name: str, measure: Callable[[], Any]) -> Any:
    with _locked(path):
        data = json.loads(path.read_text()) if path.is_file() else {}
        if name in data:
            return data[name]
        value = measure()
        data.setdefault("fingerprint", fp)
        data[name] = value
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return value


# --- memory bandwidth ----------------------------------------------------------------------------------


def _copy_gbs(threads: int, mib: int, reps: int) -> float:
    """Best copy bandwidth (bytes read + written per second, GB/s) of a `mib` MiB fp32 buffer on `threads`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(mib * 2**18)
        dst = torch.empty_like(src)
        dst.copy_(src)  # page the buffers in
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 2 * src.numel() * 4 / best / 1e9


def measure_bandwidth(mib: int = BANDWIDTH_MIB, reps: int = 5) -> dict[str, Any]:
    """Copy bandwidth with 1 thread and with every usable core (about half a second)."""
    cores = usable_cores()
    return {"mem_bw_1t_gbs": round(_copy_gbs(1, mib, reps), 2),
            "mem_bw_all_gbs": round(_copy_gbs(cores, mib, reps), 2),
            "mem_bw_threads": cores, "mem_bw_method": f"torch copy_ of {mib} MiB fp32, best of {reps}, read+write"}


def describe(cache_dir: Path | None = None, *, bandwidth: bool = True) -> dict[str, Any]:
    """The fingerprint, plus the memory bandwidth measured once per host (cached under `cache_dir`)."""
    fp = fingerprint()
    if bandwidth:
        fp |= cached(cache_dir, fp, "bandwidth", measure_bandwidth)
    return fp


def default_cache_dir() -> Path | None:
    """The project's state dir (for tools outside a run: benchmarks); None when settings cannot load."""
    try:
        from llmops.settings import Settings

        return Settings().state_dir
    except Exception:  # a benchmark still runs (uncached) where the settings are broken
        return None


def host_line(fp: dict[str, Any]) -> str:
    """One line for logs: `host: <cpu>, <arch>, <cores> cores, <isa>[, mem copy X GB/s 1 thread / Y all]`."""
    line = f"host: {fp['cpu']}, {fp['arch']}, {fp['cores']} cores, {isa_tag(fp)}"
    if "mem_bw_1t_gbs" in fp:
        line += (f", mem copy {fp['mem_bw_1t_gbs']:.1f} GB/s 1 thread / {fp['mem_bw_all_gbs']:.1f} GB/s "
                 f"{fp['mem_bw_threads']} threads")
    return line + f" [{fp['key']}]"


def lineage_tags(fp: dict[str, Any]) -> dict[str, str]:
    """MLflow/lineage tags naming the host: host.cpu, host.isa, host.cores, host.key, host.mem_bw_*."""
    tags = {"host.cpu": fp["cpu"], "host.isa": isa_tag(fp), "host.cores": str(fp["cores"]),
            "host.arch": fp["arch"], "host.key": fp["key"]}
    for k in ("mem_bw_1t_gbs", "mem_bw_all_gbs"):
        if k in fp:
            tags[f"host.{k}"] = str(fp[k])
    return tags


def for_benchmark() -> dict[str, Any]:
    """describe() with the project's per-host cache, said as one line on stderr (stdout stays the benchmark's
    report): every benchmark calls it and records the result with its timings."""
    import sys

    fp = describe(default_cache_dir())
    print(host_line(fp), file=sys.stderr, flush=True)
    return fp
