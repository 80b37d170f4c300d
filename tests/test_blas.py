"""The OpenBLAS kernel choice: the rule on fake CPUs, and its effect in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from siamindex import blas

SSE = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"
AVX = f"{SSE} avx"
AVX2 = f"{AVX} avx2 fma bmi1 bmi2"
AVX512 = f"{AVX2} avx512f avx512cd avx512bw avx512dq avx512vl"


def cpuinfo(vendor: str, flags: str, processors: int = 2) -> str:
    one = (
        f"processor\t: {{n}}\nvendor_id\t: {vendor}\nmodel name\t: Generic CPU\n"
        f"flags\t\t: {flags}\n"
    )
    return "\n".join(one.format(n=n) for n in range(processors))


@pytest.mark.parametrize(
    ("vendor", "flags", "kernel"),
    [
        ("GenuineIntel", AVX512, "SKYLAKEX"),  # a cloud Xeon reported as a generic model
        ("AuthenticAMD", AVX512, "SKYLAKEX"),  # Zen 4
        ("GenuineIntel", AVX2, "HASWELL"),
        ("AuthenticAMD", AVX2, "ZEN"),
        ("GenuineIntel", AVX, "SANDYBRIDGE"),
        ("GenuineIntel", SSE, None),
        # AVX-512 foundation without the BW/DQ/VL parts SkylakeX's kernels use (Knights Landing)
        ("GenuineIntel", f"{AVX2} avx512f avx512cd", "HASWELL"),
        ("GenuineIntel", "sse avx2", None),  # AVX2 without FMA or AVX: nothing to choose
    ],
)
def test_kernel_for_fake_cpus(vendor, flags, kernel):
    assert blas.kernel_for(vendor, flags.split()) == kernel


def test_reads_vendor_and_flags_of_the_first_processor():
    vendor, flags = blas.read_cpuinfo(cpuinfo("AuthenticAMD", AVX2))
    assert vendor == "AuthenticAMD"
    assert {"avx2", "fma", "sse"} <= flags and "avx512f" not in flags
    assert blas.read_cpuinfo("") == ("", set())


def test_choice_follows_the_cpu_when_nothing_was_set():
    choice = blas.choose({}, cpuinfo("GenuineIntel", AVX512), openblas_loaded=False)
    assert choice == blas.KernelChoice("SKYLAKEX", "chosen by siamindex from the CPU's features")


def test_a_value_set_by_the_user_or_platform_is_never_overridden():
    choice = blas.choose({blas.ENV: "Prescott"}, cpuinfo("GenuineIntel", AVX512), False)
    assert choice.kernel == "Prescott"
    assert "set before siamindex" in choice.source


def test_a_child_process_says_siamindex_chose_what_it_inherited():
    environ = {blas.ENV: "ZEN", blas.CHOSEN_ENV: "ZEN"}
    choice = blas.choose(environ, cpuinfo("AuthenticAMD", AVX2), False)
    assert choice.kernel == "ZEN" and "inherited" in choice.source
    # ...but not when the user changed the variable afterwards.
    environ[blas.ENV] = "HASWELL"
    assert "set before siamindex" in blas.choose(environ, None, False).source


@pytest.mark.parametrize(
    ("cpu", "loaded", "why"),
    [
        (cpuinfo("GenuineIntel", AVX512), True, "loaded before siamindex"),
        (None, False, "not readable"),
        (cpuinfo("GenuineIntel", SSE), False, "no AVX"),
    ],
)
def test_openblas_detects_for_itself_when_siamindex_cannot_help(cpu, loaded, why):
    choice = blas.choose({}, cpu, loaded)
    assert choice.kernel is None and why in choice.source


def test_choose_kernel_sets_the_variable_once(monkeypatch):
    monkeypatch.setattr(blas, "_CHOICE", None)
    monkeypatch.setattr(blas, "_cpuinfo", lambda: cpuinfo("GenuineIntel", AVX2))
    monkeypatch.setattr(blas, "_faiss_openblas_mapped", lambda: False)
    monkeypatch.delitem(sys.modules, "faiss", raising=False)
    environ: dict[str, str] = {}
    assert blas.choose_kernel(environ).kernel == "HASWELL"
    assert environ == {blas.ENV: "HASWELL", blas.CHOSEN_ENV: "HASWELL"}
    environ.clear()
    assert blas.choose_kernel(environ).kernel == "HASWELL"  # decided once per process
    assert environ == {}


def _report_in_fresh_process(env_extra: dict[str, str], first: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (blas.ENV, blas.CHOSEN_ENV)}
    env.update(env_extra)
    code = f"{first}import json, siamindex.blas as b; print(json.dumps(b.report()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def _this_machines_choice() -> str | None:
    return blas.choose({}, blas._cpuinfo(), openblas_loaded=False).kernel


def test_faiss_runs_the_chosen_kernel_in_a_fresh_process():
    expected = _this_machines_choice()
    if expected is None:
        pytest.skip("this machine has no AVX, or its CPU features cannot be read")
    report = _report_in_fresh_process({})
    assert report["requested"] == expected
    assert report["kernel"].upper() == expected  # OpenBLAS names it in its own case
    assert report["source"] == "chosen by siamindex from the CPU's features"


def test_a_kernel_set_by_the_user_is_what_faiss_runs():
    report = _report_in_fresh_process({blas.ENV: "Prescott"})
    assert report["kernel"] == "Prescott"
    assert "set before siamindex" in report["source"]


def test_faiss_imported_first_keeps_openblas_own_detection():
    report = _report_in_fresh_process({}, first="import faiss; ")
    assert report["requested"] is None and "loaded before siamindex" in report["source"]
    assert report["kernel"]  # still reported, whatever OpenBLAS picked


def test_summary_is_one_line():
    line = blas.summary({"openblas": "0.3.15", "kernel": "Zen", "source": "chosen by x"})
    assert line == "FAISS's OpenBLAS 0.3.15: kernel Zen (chosen by x)"
