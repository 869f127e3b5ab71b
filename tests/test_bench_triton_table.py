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
    for r in rows:
        assert r["errors"] == []
        assert not any("resident" in k or "streamed" in k for k in r)  # one column: the launcher's default
        for col in ("copy_ms", "multinomial_ms", "reference_ms", "triton_ms"):
            assert math.isfinite(r[col]) and r[col] > 0, (r["case"], col)
    md = kernels.table_markdown("t", {}, rows)
    assert md.count("| sample 3x300 float32 ") == len(kernels.TRITON_VARIANTS)


def test_a_failing_sampler_keeps_the_other_columns(interpreted: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from dbert_kernels import reference

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(reference, "sample", broken)
    row = next(kernels.triton_sampling_table(2, 300, torch.float32, torch.device("cpu"), warmup=0, repeats=1))
    assert math.isnan(row["reference_ms"]) and math.isnan(row["triton_vs_reference"])
    assert row["errors"] and "planted failure" in row["errors"][0]
    assert math.isfinite(row["triton_ms"])
    assert "planted failure" in kernels.table_markdown("t", {}, [row])


def test_compile_task_reports_instead_of_raising() -> None:
    if torch.cuda.is_available():
        pytest.skip("the error path needs a machine without CUDA")
    error = kernels._compile_one(("cuda", 4096, 64, "float32", 2))
    assert error.startswith("64 float32 top-k 30:")


def test_compile_rows_keep_the_row_count_specialisation() -> None:
    # Triton specialises an int argument on == 1 and on divisibility by 16
    for rows in (1, 3, 16, 17, 4096, 4095, 8192, 100):
        n = kernels.compile_rows(rows)
        assert n <= 17 and (n == 1) == (rows == 1) and (n % 16 == 0) == (rows % 16 == 0), rows


def test_shape_compiler_without_jobs_waits_for_nothing() -> None:
    compiler = kernels.ShapeCompiler([(300, "float32")], 3, torch.device("cpu"), 0)
    waited, errors = compiler.wait(300, "float32")
    assert errors == [] and waited < 1
    compiler.close()


def test_kernels_main_writes_its_table_under_the_interpreter(interpreted: None, tmp_path) -> None:
    import json

    kernels.main(["--device", "cpu", "--rows", "2", "--vocabs", "300", "--dtypes", "float32", "--warmup", "0",
                  "--repeats", "1", "--compile-jobs", "0", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "triton_kernels_cpu_interpreter.json").read_text())
    assert len(data["results"]) == len(kernels.TRITON_VARIANTS)
    assert "| sample 2x300 float32 T=1 |" in (tmp_path / "triton_kernels_cpu_interpreter.md").read_text()


def test_traffic_script_launches_each_kernel_once_per_case(interpreted: None, capsys: pytest.CaptureFixture) -> None:
    from bench import traffic

    traffic.main(["--device", "cpu", "--rows", "3", "--vocab", "300", "--dtypes", "bfloat16,float32"])
    launches = [line for line in capsys.readouterr().out.splitlines() if line.startswith("launch ")]
    assert len(launches) == 2 * 2  # dtypes x default variants, the launcher's default kernel each
    assert "logits_bytes=1800" in launches[0] and "logits_bytes=3600" in launches[-1]
    with pytest.raises(SystemExit, match="unknown variants"):
        traffic.main(["--device", "cpu", "--variants", "top-k 31"])
