"""The GPU script's Triton kernel table, run on the CPU under the Triton interpreter (tiny shapes)."""

from __future__ import annotations

import math

import pytest
import torch

from bench import kernels

pytestmark = [pytest.mark.interpreter, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


@pytest.fixture
def interpreted() -> None:
    pytest.importorskip("triton")
    from dbert_kernels.backends import available_backends

    if "triton" not in available_backends("cpu"):
        pytest.skip("set TRITON_INTERPRET=1 to run the Triton kernels on the CPU")


def test_table_has_every_variant_and_sampler(interpreted: None) -> None:
    rows = list(kernels.triton_sampling_table(3, 300, torch.float32, torch.device("cpu"), warmup=0, repeats=1))
    assert [r["case"].split(" ", 3)[3] for r in rows] == [v[0] for v in kernels.TRITON_VARIANTS]
    # the launcher's default kernel: resident with top-k (the row fits), streamed otherwise
    assert [r["kernel"] for r in rows] == ["resident" if v[2] else "streamed" for v in kernels.TRITON_VARIANTS]
    for r in rows:
        assert r["errors"] == []
        assert r["triton_ms"] == r[f"triton_{r['kernel']}_ms"]
        for col in ("copy_ms", "multinomial_ms", "reference_ms", "triton_resident_ms", "triton_streamed_ms"):
            assert math.isfinite(r[col]) and r[col] > 0, (r["case"], col)


def test_a_failing_sampler_keeps_the_other_columns(interpreted: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from dbert_kernels import reference

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(reference, "sample", broken)
    row = next(kernels.triton_sampling_table(2, 300, torch.float32, torch.device("cpu"), warmup=0, repeats=1))
    assert math.isnan(row["reference_ms"]) and math.isnan(row["triton_vs_reference"])
    assert row["errors"] and "planted failure" in row["errors"][0]
    assert math.isfinite(row["triton_ms"]) and math.isfinite(row["triton_streamed_ms"])


def test_compile_task_reports_instead_of_raising() -> None:
    if torch.cuda.is_available():
        pytest.skip("the error path needs a machine without CUDA")
    error = kernels._compile_one((64, "float32", 2, True))
    assert error.startswith("64 float32") and "resident=True" in error


def test_traffic_script_launches_each_kernel_once_per_case(interpreted: None, capsys: pytest.CaptureFixture) -> None:
    from bench import traffic

    traffic.main(["--device", "cpu", "--rows", "3", "--vocab", "300", "--dtypes", "bfloat16,float32"])
    launches = [line for line in capsys.readouterr().out.splitlines() if line.startswith("launch ")]
    assert len(launches) == 2 * 2 * 2  # dtypes x default variants x (resident, streamed)
    assert "logits_bytes=1800" in launches[0] and "logits_bytes=3600" in launches[-1]
    with pytest.raises(SystemExit, match="unknown variants"):
        traffic.main(["--device", "cpu", "--variants", "top-k 31"])
