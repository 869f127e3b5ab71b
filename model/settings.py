"""The settings objects: a model's :class:`DiffusionSettings` (saved with every checkpoint as
``dbert.json``) and a run's :class:`TrainConfig` (saved in ``trainer_state.json``).

:class:`DiffusionSettings`: everything that generation and evaluation need besides the weights
and the tokenizer: the time design, the noise schedule, the loss, the sequence length and the
vocabulary fingerprint.

:class:`TrainConfig` validates itself on construction, so the Python API, a ``--config`` file
(:meth:`TrainConfig.from_json`, which also refuses unknown fields) and the ``dbert train`` flags
refuse the same bad values with the same one-line message.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from dbert_kernels import Schedule

__all__ = [
    "DiffusionSettings", "TIME_DESIGNS", "LOSSES", "SCHEDULES", "HYBRID_CE_SETS", "LOSS_NORMS", "TIME_INITS",
    "schedule_from_name", "TrainConfig", "TRAIN_FLAGS", "flag_of", "TRAIN_DEFAULT_TIME",
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


#: ``dbert train`` flags whose names differ from the :class:`TrainConfig` / :class:`DiffusionSettings` field.
TRAIN_FLAGS = {"lambda": "spindle_lambda", "steps": "max_steps", "minutes": "max_minutes", "warmup": "warmup_steps"}


def flag_of(name: str) -> str:
    """The ``dbert train`` flag of the field ``name`` (``max_steps`` -> ``--steps``)."""
    flag = {v: k for k, v in TRAIN_FLAGS.items()}.get(name, name)
    if name in ("resume", "progress"):
        flag = f"no_{name}"
    return "--" + flag.replace("_", "-")


def _bad(name: str, rule: str, value: Any) -> ValueError:
    return ValueError(f"{name} must be {rule}, got {value!r} ({flag_of(name)})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: TrainConfig fields checked as integers: name -> smallest value (None allowed where the default is None).
_INT_FIELDS = {
    "batch_size": 1, "max_steps": 1, "eval_every": 1, "eval_sentences": 1, "save_every": 1, "log_every": 1,
    "grad_accum": 1, "warmup_steps": 0, "sample_every": 0, "stop_after": 1, "max_train_sentences": 1,
}
#: TrainConfig fields checked as finite numbers: name -> (smallest value, whether it is allowed).
_FLOAT_FIELDS = {"lr": (0.0, False), "weight_decay": (0.0, True), "grad_clip": (0.0, False), "max_minutes": (0.0, False)}
_OPTIONAL = ("stop_after", "max_train_sentences", "max_minutes", "tokenizer")


#: How long ``dbert train`` with the :class:`TrainConfig` defaults takes on a 2-core CPU (MiniLM
#: init, the built-in corpus, 64 tokens: about 2.5 s a step with 1 or 2 threads; validations and
#: saves included).
TRAIN_DEFAULT_TIME = "about 7 minutes"


@dataclass
class TrainConfig:
    """All switches of a training run (JSON-serialisable; saved in ``trainer_state.json``).

    Architecture: ``arch`` names a registered architecture (:mod:`dbert_model.arch`):
    ``"diffusion"`` (DiffusionBERT) or ``"gpt2"`` (the autoregressive baseline of
    :mod:`dbert_model.ar`: a GPT-2 shaped like the BERT that ``init`` names, random weights, same
    tokenizer, data, order and schedule; the diffusion fields are then unused).
    Model: ``init`` is ``"minilm"`` (pretrained MiniLM, head built), ``"scratch"`` (the MiniLM
    architecture with random weights), ``"tiny"`` (2 x 64, for tests and demos), ``"bert-base"``
    (random bert-base size) or a local pretrained directory. ``tokenizer``: a directory or
    vocab.txt (default: the init directory's, else MiniLM's bert-base-uncased vocabulary).
    ``diffusion``: the :class:`DiffusionSettings` of the model (time design, schedule, loss,
    max_len...); its vocabulary fields are filled from the tokenizer.
    Data: ``data`` is ``"builtin"`` or a path (see :func:`dbert_model.data.load_corpus`);
    ``max_train_sentences`` caps the training split (None: all).
    ``batch_size`` is the global batch of one optimiser step, whatever the number of processes;
    ``grad_accum`` splits it into that many micro-batches (forward/backward one after the other).
    ``bf16``: bfloat16 mixed precision of the engine (weights and optimizer stay float32).
    Stopping: ``max_steps`` sets the length (and the learning-rate schedule); ``stop_after`` (a
    step) or ``max_minutes`` end this call early with a checkpoint that a later call resumes.
    The defaults (150 steps of 16 sentences of 64 tokens, warm-up 15) are sized for a CPU: they
    finish in :data:`TRAIN_DEFAULT_TIME` on a 2-core CPU; the paper's recipe is
    ``recipes/bert-base-lm1b.json``. A warm-up not shorter than the run is clipped by :func:`train`.
    Output: ``out`` is a run directory (see :mod:`dbert_model.checkpoint`); an existing ``out`` that
    is not a dbert checkpoint is refused unless ``overwrite`` (then the checkpoints are written
    next to its files, which are kept); ``resume=False`` with an existing checkpoint is refused
    unless ``overwrite`` (then training starts over and its first save replaces the old one).
    ``count_special_tokens``: the token counts of the spindle schedule's information include
    ``[CLS]`` / ``[SEP]`` (True, what every earlier checkpoint stores) or not (False: the
    authors' ``word_freq.py`` counts; :func:`dbert_model.data.token_counts`).

    Every field is checked on construction (ValueError with one line naming the field and its
    ``dbert train`` flag), so a bad value is refused the same way from Python, ``--config`` and flags.
    """

    out: str = "runs/dbert"
    arch: str = "diffusion"
    data: str = "builtin"
    init: str = "minilm"
    tokenizer: str | None = None
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 15
    max_steps: int = 150
    max_minutes: float | None = None
    stop_after: int | None = None
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_sentences: int = 256
    save_every: int = 50
    log_every: int = 10
    sample_every: int = 0
    grad_accum: int = 1
    max_train_sentences: int | None = None
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    backend: str = "auto"
    resume: bool = True
    overwrite: bool = False
    progress: bool = True
    count_special_tokens: bool = True

    def __post_init__(self) -> None:
        from .arch import architecture_names

        names = architecture_names()
        if self.arch not in names:
            raise _bad("arch", f"one of {names}", self.arch)
        for name in ("out", "data", "init", "tokenizer", "device", "backend"):
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name in _OPTIONAL)) or (value == "" and name not in ("out", "tokenizer")):
                raise _bad(name, "a non-empty string", value)
        for name in ("bf16", "resume", "overwrite", "progress", "count_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, "true or false", getattr(self, name))
        if not _is_int(self.seed):
            raise _bad("seed", "an int", self.seed)
        for name, low in _INT_FIELDS.items():
            value = getattr(self, name)
            if not (value is None and name in _OPTIONAL) and not (_is_int(value) and value >= low):
                raise _bad(name, f"an int >= {low}" + (" or null" if name in _OPTIONAL else ""), value)
        for name, (low, inclusive) in _FLOAT_FIELDS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not (_is_number(value) and (value >= low if inclusive else value > low)):
                rule = f"a finite number {'>=' if inclusive else '>'} {low:g}" + (" or null" if name in _OPTIONAL else "")
                raise _bad(name, rule, value)
        if not isinstance(self.diffusion, DiffusionSettings):
            raise ValueError(f"diffusion must be DiffusionSettings, got {type(self.diffusion).__name__}")

    def settings(self, tokenizer: Any) -> DiffusionSettings:
        """The run's :class:`DiffusionSettings` with the vocabulary fields filled from ``tokenizer``."""
        from .tokenizer import special_ids, vocab_fingerprint

        return replace(
            self.diffusion, vocab_size=len(tokenizer.get_vocab()), vocab_sha256=vocab_fingerprint(tokenizer),
            special_ids=special_ids(tokenizer),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the diffusion settings nested under ``"diffusion"``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> TrainConfig:
        """Inverse of :meth:`to_json`; also reads the flat form of older checkpoints (the diffusion
        fields at the top level). An unknown field is refused (ValueError naming it and the
        nearest known name): a misspelt setting must not be dropped silently."""
        if not isinstance(data, dict):
            raise ValueError(f"a training configuration must be a JSON object, got {type(data).__name__}")
        own = {f.name for f in fields(cls)} - {"diffusion"}
        diffusion_fields = {f.name for f in fields(DiffusionSettings)}
        nested = data.get("diffusion", {})
        if not isinstance(nested, dict):
            raise ValueError(f"'diffusion' must be a JSON object, got {type(nested).__name__}")
        _refuse_unknown(data, own | diffusion_fields | {"diffusion"}, "")
        _refuse_unknown(nested, diffusion_fields, "diffusion.")
        flat = {k: v for k, v in data.items() if k in diffusion_fields}
        return cls(
            **{k: v for k, v in data.items() if k in own},
            diffusion=DiffusionSettings(**{**flat, **nested}),
        )


def _refuse_unknown(data: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"
            raise ValueError(f"unknown training setting '{prefix}{key}'{hint}")
