"""The numeric environment (allocator/service/numerics.py): every entry point asks OpenBLAS for one kernel set, so that
a decision re-derives alike on every x86-64 machine with AVX2; a process that runs another says so."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from allocator.service import numerics
from cli.main import main

ROOT = Path(__file__).resolve().parent.parent
X86_AVX2 = platform.machine().lower() in ("x86_64", "amd64") and numerics._has_avx2_fma()


def _fresh_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != numerics.BLAS_CORE_VARIABLE}
    return {**env, **extra}


@pytest.mark.skipif(not X86_AVX2, reason="the Haswell kernels need an x86-64 processor with AVX2 and FMA")
def test_the_test_process_decides_with_the_pinned_kernels() -> None:
    """On an AVX-512 machine OpenBLAS chose its SkylakeX kernels and 24 of the 50 recorded solves came out
    different (tests/test_solver_revisions.py): the suite now runs as the allocator does."""
    assert numerics.blas_kernel() == numerics.BLAS_CORE
    assert numerics.mismatch() is None


@pytest.mark.skipif(not X86_AVX2, reason="the Haswell kernels need an x86-64 processor with AVX2 and FMA")
@pytest.mark.parametrize("entry", ["cli", "benchmarks", "simulation"])
def test_each_entry_point_pins_the_kernels_before_numpy_loads(entry: str) -> None:
    """A fresh process (no OPENBLAS_CORETYPE of its own) that starts at an entry point runs the Haswell kernels."""
    code = f"import {entry}, numpy\nfrom allocator.service.numerics import blas_kernel\nprint(blas_kernel())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_fresh_env(), capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    assert done.stdout.strip() == numerics.BLAS_CORE


@pytest.mark.skipif(not X86_AVX2, reason="the Sandybridge kernels need an x86-64 processor with AVX")
def test_a_kernel_the_user_chose_is_kept_and_named_by_serve_and_audit(tmp_path: Path) -> None:
    """OPENBLAS_CORETYPE set by the user wins (a machine may need it), and the commands whose decisions must agree
    with other machines' say on stderr that they may not."""
    log = tmp_path / "log.sqlite"
    env = _fresh_env(OPENBLAS_CORETYPE="Sandybridge")
    argv = [sys.executable, "-m", "cli.main"]
    for command in (["init", "--log", str(log)], ["serve", "--log", str(log), "--max-cycles", "1", "--duration", "60"],
                    ["audit", "--log", str(log)]):  # fmt: skip
        done = subprocess.run([*argv, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        if command[0] in ("serve", "audit"):
            assert f"allocator {command[0]}: warning: numpy's OpenBLAS runs its Sandybridge kernels" in done.stderr
        else:
            assert "warning" not in done.stderr


def test_pin_leaves_a_loaded_numpy_and_a_chosen_kernel_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(numerics.BLAS_CORE_VARIABLE, "Zen")
    numerics.pin()
    assert os.environ[numerics.BLAS_CORE_VARIABLE] == "Zen"
    monkeypatch.delenv(numerics.BLAS_CORE_VARIABLE)
    assert "numpy" in sys.modules  # this process loaded it long ago: too late to choose
    numerics.pin()
    assert numerics.BLAS_CORE_VARIABLE not in os.environ


def test_main_runs_in_this_process_without_a_warning_when_pinned(capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:  # fmt: skip
    log = ["--log", str(tmp_path / "log.sqlite")]
    assert main(["init", *log]) == 0
    assert main(["audit", *log, "--report", str(tmp_path / "report.json")]) == 0
    err = capsys.readouterr().err
    assert ("warning: numpy's OpenBLAS" in err) == (numerics.mismatch() is not None)
