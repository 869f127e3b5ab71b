"""The diffusion settings saved with every checkpoint (``dbert.json``).

Everything that generation and evaluation need besides the weights and the tokenizer: the time
design, the noise schedule, the loss, the sequence length and the vocabulary fingerprint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from dbert_kernels import Schedule

__all__ = [
    "DiffusionSettings", "TIME_DESIGNS", "LOSSES", "SCHEDULES", "HYBRID_CE_SETS", "LOSS_NORMS", "TIME_INITS",
    "schedule_from_name",
]

#: Time-step designs of the paper: time-agnostic, layer-wise time embedding, prefix time token.
TIME_DESIGNS = ("tad", "lte", "pte")
#: Training objectives: D3PM hybrid loss (discrete time) and the continuous-time MDLM ELBO.
LOSSES = ("d3pm", "mdlm")
#: Hybrid-loss cross-entropy sets: masked positions only, or every non-pad position (the authors').
HYBRID_CE_SETS = ("masked", "all")
#: Training-loss normalisations: per noisable token of the batch, or per sentence (the authors').
LOSS_NORMS = ("token", "sentence")
#: Initialisations of the LTE / PTE time MLPs (see :mod:`dbert_model.network`).
TIME_INITS = ("normal", "zero")
#: Named schedules accepted by the CLI and :func:`schedule_from_name` (names of ``Schedule``'s constructors).
SCHEDULES = ("spindle", "d3pm", "cosine")

SETTINGS_FILE = "dbert.json"
FORMAT_VERSION = 1


def schedule_from_name(
    name: str, *, T: float = 1000.0, spindle_lambda: float = 0.3, spindle_form: str = "code"
) -> Schedule:
    """The :class:`~dbert_kernels.Schedule` named ``name``, built by its constructor of that name:
    ``"spindle"`` (:meth:`Schedule.spindle`, linear base + spindle term), ``"d3pm"``
    (:meth:`Schedule.d3pm`, linear) or ``"cosine"`` (:meth:`Schedule.cosine`)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    if name == "spindle":
        if spindle_lambda <= 0:
            raise ValueError("the spindle schedule needs spindle_lambda > 0 (use 'd3pm' for lambda = 0)")
        return Schedule.spindle(spindle_lambda, spindle_form, T=T)  # type: ignore[arg-type]
    return getattr(Schedule, name)(T=T)


@dataclass
class DiffusionSettings:
    """Diffusion hyper-parameters of a model (JSON-serialisable).

    Attributes:
        time_design: ``"tad"`` (no time input), ``"lte"`` or ``"pte"``.
        schedule: ``"spindle"``, ``"d3pm"`` or ``"cosine"``.
        T: number of diffusion steps of the forward process (an integer for the D3PM loss).
        spindle_lambda, spindle_form: the spindle term (ignored unless ``schedule="spindle"``).
        loss: ``"d3pm"`` (hybrid: KL + hybrid_lambda * CE) or ``"mdlm"`` (continuous-time ELBO).
        hybrid_lambda: weight of the auxiliary cross-entropy term.
        hybrid_ce: the positions of that term: ``"masked"`` (default: the positions the bound
            scores; an unmasked token is visible in the input, so its CE teaches copying) or
            ``"all"`` (the authors' code: masked positions plus every real token).
        loss_norm: ``"token"`` (default: the batch loss over its noisable positions, so the
            gradient scale does not grow with sentence length and the gradient-clipping threshold
            keeps its meaning) or ``"sentence"`` (the authors': over the batch size).
        time_init: ``"normal"`` (default, the authors': time enters LTE/PTE from the first step)
            or ``"zero"`` (LTE/PTE start out exactly as TAD); see :mod:`dbert_model.network`.
        max_len: sequence length including ``[CLS]`` and ``[SEP]`` (sentences are padded to it).
        vocab_size, vocab_sha256: the tokenizer's vocabulary (checked on load).
        special_ids: ``cls``, ``sep``, ``pad``, ``mask``, ``unk`` ids of the tokenizer.
    """

    time_design: Literal["tad", "lte", "pte"] = "tad"
    schedule: Literal["spindle", "d3pm", "cosine"] = "spindle"
    T: float = 1000.0
    spindle_lambda: float = 0.3
    spindle_form: Literal["code", "paper"] = "code"
    loss: Literal["d3pm", "mdlm"] = "d3pm"
    hybrid_lambda: float = 0.01
    hybrid_ce: Literal["masked", "all"] = "masked"
    loss_norm: Literal["token", "sentence"] = "token"
    time_init: Literal["normal", "zero"] = "normal"
    max_len: int = 64
    vocab_size: int = 0
    vocab_sha256: str = ""
    special_ids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.time_design not in TIME_DESIGNS:
            raise ValueError(f"time_design must be one of {TIME_DESIGNS}, got {self.time_design!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss == "d3pm" and float(self.T) != int(self.T):
            raise ValueError(f"the D3PM loss needs an integer number of steps T, got {self.T}")
        if not (isinstance(self.max_len, int) and self.max_len >= 3):
            raise ValueError(f"max_len must be an int >= 3 ([CLS] x [SEP]), got {self.max_len!r}")
        for name, allowed in (("hybrid_ce", HYBRID_CE_SETS), ("loss_norm", LOSS_NORMS), ("time_init", TIME_INITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.hybrid_lambda < 0:
            raise ValueError(f"hybrid_lambda must be >= 0, got {self.hybrid_lambda}")
        self.build_schedule()  # validates the schedule fields

    def build_schedule(self) -> Schedule:
        """The :class:`dbert_kernels.Schedule` of these settings."""
        return schedule_from_name(
            self.schedule, T=float(self.T), spindle_lambda=self.spindle_lambda, spindle_form=self.spindle_form
        )

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    def check_vocabulary_fields(self, where: str = "the settings") -> None:
        """Raise ValueError unless the vocabulary fields are filled and consistent: ``vocab_size``
        > 0, a SHA-256 fingerprint, and the five special ids as ints in ``[0, vocab_size)``."""
        size = self.vocab_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{where}: vocab_size must be an int >= 1, got {size!r} (the file is damaged)")
        if not isinstance(self.vocab_sha256, str) or len(self.vocab_sha256) != 64:
            raise ValueError(f"{where}: vocab_sha256 must be a SHA-256 hex digest (the file is damaged)")
        ids = self.special_ids
        for name in ("cls", "sep", "pad", "mask", "unk"):
            value = ids.get(name) if isinstance(ids, dict) else None
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
                raise ValueError(
                    f"{where}: special_ids[{name!r}] must be a token id in [0, {size}), got {value!r} (the file is damaged)"
                )

    @classmethod
    def from_json(cls, data: Any) -> DiffusionSettings:
        """Settings from their JSON form (unknown keys ignored; missing ones take the defaults)."""
        if not isinstance(data, dict):
            raise ValueError(f"diffusion settings must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        version = data.get("format_version", FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"format_version must be an int, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"settings format version {version} is newer than this dbert ({FORMAT_VERSION}): upgrade dbert-kernels"
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, directory: str | Path) -> None:
        Path(directory, SETTINGS_FILE).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> DiffusionSettings:
        path = Path(directory, SETTINGS_FILE)
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} is not a dbert checkpoint (no {SETTINGS_FILE}); train one with `dbert train`"
            )
        try:
            settings = cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not valid dbert settings ({exc}): the checkpoint is damaged") from exc
        settings.check_vocabulary_fields(str(path))
        return settings
