"""``dbert generate`` with the decoding flags: strategies, blocks, cache, steps shown, errors."""

from __future__ import annotations

import pytest

from dbert_model.cli import main


@pytest.fixture
def checkpoint(decoding_checkpoint: str) -> str:
    return decoding_checkpoint


def test_generate_threshold_blocks_cache_show_steps(checkpoint, capsys) -> None:
    args = ["generate", "--model", checkpoint, "-n", "2", "--steps", "8", "--no-progress", "--strategy", "threshold",
            "--threshold", "0.9", "--block-length", "5", "--cache", "dual", "--show-steps", "--early-stop"]
    assert main(args) == 0
    captured = capsys.readouterr()
    steps = [line for line in captured.out.splitlines() if line.startswith("step ")]
    assert steps and "*" in steps[0] and "_" in steps[0]
    assert "denoiser calls (at most 8)" in captured.err
    posterior = ["generate", "--model", checkpoint, "-n", "2", "--steps", "8", "--no-progress", "--block-length", "5",
                 "--cache", "dual", "--reveal", "authors", "--strategy", "posterior"]
    assert main(posterior) == 0
    assert main([*posterior, "--threshold", "0.9"]) == 2  # the posterior takes no threshold
    assert "does not use threshold" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, word",
    [
        (["--strategy", "threshold", "--threshold", "1.5"], "threshold"),
        (["--strategy", "entropy_bound", "--gamma", "0"], "gamma"),
        (["--block-length", "0"], "--block-length"),
    ],
)
def test_generate_bad_decoding_flags_exit_2_with_one_line(checkpoint, capsys, flags, word) -> None:
    assert main(["generate", "--model", checkpoint, "-n", "1", "--steps", "4", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0]


def test_spindle_checkpoint_samples_with_its_schedule_by_default(checkpoint, capsys, monkeypatch) -> None:
    from dbert_kernels.strategies import SpindlePosteriorStep

    calls = []
    real = SpindlePosteriorStep.probability

    def spy(self, ids, guess, s, t):
        calls.append(self.reveal)
        return real(self, ids, guess, s, t)

    monkeypatch.setattr(SpindlePosteriorStep, "probability", spy)
    base = ["generate", "--model", checkpoint, "-n", "2", "--steps", "4", "--no-progress"]
    assert main(base) == 0 and calls and set(calls) == {"exact"}
    calls.clear()
    assert main([*base, "--reveal", "authors"]) == 0 and set(calls) == {"authors"}
    calls.clear()
    assert main([*base, "--sentence-level"]) == 0 and not calls
    capsys.readouterr()


@pytest.mark.parametrize("flag, value", [("--confidence", "certainty"), ("--scores", "softmax"), ("--order", "random"),
                                         ("--counts", "linear")])
def test_a_bad_choice_is_one_line_naming_the_flag(checkpoint, capsys, flag, value) -> None:
    assert main(["generate", "--model", checkpoint, "-n", "1", "--steps", "4", "--no-progress", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} must be one of" in err[0]
