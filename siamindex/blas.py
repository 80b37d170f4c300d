"""Which CPU kernel FAISS's OpenBLAS runs, chosen from the CPU's features before FAISS loads.

faiss-cpu's wheels bundle their own OpenBLAS (0.3.15 in faiss-cpu 1.15.1), which picks a kernel
from the CPU's vendor, family and model when it is loaded. A model it does not know, which is
common on cloud VMs that report a generic one, gets the generic Prescott kernel: flat search then
runs at about a third of its speed. OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when the library is
loaded, so the choice has to be made before the first ``import faiss``: ``siamindex/__init__.py``
calls ``choose_kernel()`` first thing.

The rule: never override a value the user or the platform set; never act once FAISS's OpenBLAS
is already loaded (it would not take effect, and a report would lie); otherwise pick the best kernel
that the CPU's features support (the kernel OpenBLAS itself picks on a CPU model it knows), and
leave OpenBLAS alone on CPUs we do not know how to read (not x86-64 Linux).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "OPENBLAS_CORETYPE"
# Set beside ENV when siamindex made the choice, so that child processes (which inherit both)
# report who chose it, and so that the value can be told apart from one the user set.
CHOSEN_ENV = "SIAMINDEX_OPENBLAS_CORETYPE"
CPUINFO = Path("/proc/cpuinfo")

AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


@dataclass(frozen=True)
class KernelChoice:
    """What was decided about ``OPENBLAS_CORETYPE`` at import.

    Attributes:
        kernel: the value in force for libraries loaded from now on (None: OpenBLAS detects).
        source: one line saying who chose it and why.
    """

    kernel: str | None
    source: str


def kernel_for(vendor: str, flags: Iterable[str]) -> str | None:
    """The fastest OpenBLAS x86-64 kernel that a CPU with these ``/proc/cpuinfo`` flags runs.

    AVX-512 (F, CD, BW, DQ, VL: what OpenBLAS's SkylakeX kernels use) -> SKYLAKEX; AVX2 with FMA
    -> HASWELL, or ZEN on AMD (OpenBLAS's name for the same kernels with AMD's cache sizes); AVX
    -> SANDYBRIDGE; anything older -> None (OpenBLAS's own detection is as good).
    """
    have = set(flags)
    if AVX512 <= have:
        return "SKYLAKEX"
    if {"avx2", "fma"} <= have:
        return "ZEN" if vendor == "AuthenticAMD" else "HASWELL"
    if "avx" in have:
        return "SANDYBRIDGE"
    return None


def read_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(vendor, flags) of the first processor in ``/proc/cpuinfo`` text ("" and {} if absent)."""
    vendor, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags":
            flags = set(value.split())
            break
    return vendor, flags


def choose(environ: Mapping[str, str], cpuinfo: str | None, openblas_loaded: bool) -> KernelChoice:
    """The decision, from the environment, the CPU's description and what is loaded (pure).

    Args:
        environ: the process environment.
        cpuinfo: ``/proc/cpuinfo`` text, or None where there is none to read (not Linux x86-64).
        openblas_loaded: whether an OpenBLAS is already loaded into the process.
    """
    given = environ.get(ENV)
    if given:
        if environ.get(CHOSEN_ENV) == given:
            return KernelChoice(given, "chosen by siamindex from the CPU's features (inherited)")
        return KernelChoice(given, f"{ENV} set before siamindex started; left as it is")
    if openblas_loaded:
        return KernelChoice(None, "OpenBLAS's own detection (it was loaded before siamindex)")
    if cpuinfo is None:
        return KernelChoice(None, "OpenBLAS's own detection (CPU features not readable here)")
    vendor, flags = read_cpuinfo(cpuinfo)
    kernel = kernel_for(vendor, flags)
    if kernel is None:
        return KernelChoice(None, "OpenBLAS's own detection (no AVX: nothing faster to choose)")
    return KernelChoice(kernel, "chosen by siamindex from the CPU's features")


def _cpuinfo() -> str | None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        return CPUINFO.read_text()
    except OSError:
        return None


_CHOICE: KernelChoice | None = None


def choose_kernel(environ: MutableMapping[str, str] = os.environ) -> KernelChoice:
    """Decide once per process and set ``OPENBLAS_CORETYPE`` if siamindex chooses the kernel.

    Numpy's own OpenBLAS is usually loaded by then (it reads the variable at its load too), so
    the choice mostly concerns FAISS's bundled one, loaded on the first ``import faiss``.
    """
    global _CHOICE
    if _CHOICE is None:
        # Only FAISS's OpenBLAS matters: numpy's (loaded by now, as a rule) has its own.
        choice = choose(environ, _cpuinfo(), "faiss" in sys.modules or _faiss_openblas_mapped())
        if choice.kernel and ENV not in environ:
            environ[ENV] = choice.kernel
            environ[CHOSEN_ENV] = choice.kernel
        _CHOICE = choice
    return _CHOICE


def _faiss_openblas_mapped() -> bool:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "faiss_cpu.libs/libopenblas" in maps


def loaded_kernels() -> list[dict[str, Any]]:
    """Each OpenBLAS loaded in this process: library, version and the kernel it runs."""
    from threadpoolctl import threadpool_info

    return [
        {
            "library": Path(str(info.get("filepath"))).parent.name,
            "version": info.get("version"),
            "kernel": info.get("architecture"),
            "threads": info.get("num_threads"),
        }
        for info in threadpool_info()
        if info.get("internal_api") == "openblas"
    ]


def report() -> dict[str, Any]:
    """What ``info`` and the benchmarks show: FAISS's OpenBLAS kernel and who chose it.

    Imports FAISS (so that its OpenBLAS is loaded and can be asked).
    """
    import faiss  # noqa: F401  (loads FAISS's OpenBLAS so that it can be asked)

    choice = choose_kernel()
    libraries = loaded_kernels()
    faiss_blas = [lib for lib in libraries if lib["library"].startswith("faiss")]
    running = (faiss_blas or libraries or [{"kernel": None, "version": None}])[0]
    return {
        "kernel": running["kernel"],
        "openblas": running["version"],
        "source": choice.source,
        "requested": choice.kernel,
    }


def summary(blas: Mapping[str, Any]) -> str:
    """One line for tables and benchmark headers, e.g. "OpenBLAS 0.3.15 kernel Zen (...)"."""
    return f"FAISS's OpenBLAS {blas['openblas']}: kernel {blas['kernel']} ({blas['source']})"
