"""What each config group may hold, checked at the start of every job before any model loads.

``validate_job(cfg)`` checks the whole composed job config against these schemas and returns the
typed settings the pipeline runs with (``JobSettings``); the first bad value stops the job with one
line (``sbr_bench.schema``). The settings groups have their model here; the plug-in groups
(``model``, ``data``, ``defense``, ``stack``, ``judge``) are checked against their ``_target_``'s
signature. No field below has a default that the YAML files do not also state: every value the
pipeline uses is the value ``sbr-bench --cfg job`` prints.

``sbr-bench`` runs the same check for every job of a sweep before the first one starts, so a bad
value in the last job of a grid fails in seconds, not after hours.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ConfigDict, field_validator, model_validator

from sbr_bench.schema import (
    Fraction,
    NonEmpty,
    NonEmptyStr,
    NonNegativeFloat,
    NonNegativeInt,
    Percent,
    PositiveFloat,
    PositiveInt,
    Schema,
    check,
    check_plugin,
)

SCHEDULERS = Literal["constant", "linear", "cosine"]
Dropout = Annotated[float, Ge(0), Lt(1)]


class AdapterSettings(Schema):
    """What a training stage updates: a fresh LoRA adapter, or every weight (``kind: full``).

    ``full`` ignores the LoRA keys (``align=scratch`` keeps those of the ``sft`` recipe it extends).
    ``continue`` (attack only, ``conf/adapter/continue.yaml``) trains the alignment stage's own LoRA,
    kept unmerged, as Booster's and the Vaccine code's EWC protocols do: its shape is the
    alignment's (``align.adapter``), so the LoRA keys here must be null.
    """

    kind: Literal["lora", "full", "continue"]
    r: PositiveInt | None = None
    alpha: PositiveInt | None = None
    dropout: Dropout | None = None
    target_modules: NonEmptyStr | Annotated[list[NonEmptyStr], NonEmpty] | None = None
    use_rslora: bool | None = None
    freeze_lora_a: bool = False  # A frozen at its random init, only B trains (conf/adapter/rank1_frozen_a.yaml)

    @model_validator(mode="after")
    def _lora_keys(self):
        if self.kind == "lora":
            missing = [k for k in ("r", "alpha", "dropout", "target_modules", "use_rslora") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"kind=lora needs {', '.join(missing)}")
        elif self.kind == "continue":
            given = [
                k for k in ("r", "alpha", "dropout", "target_modules", "use_rslora") if getattr(self, k) is not None
            ]
            if given or self.freeze_lora_a:
                raise ValueError(
                    f"kind=continue trains the alignment's LoRA, whose shape is align.adapter's; drop "
                    f"{', '.join(given) or 'freeze_lora_a'} (use adapter=continue, which leaves them null)"
                )
        elif self.freeze_lora_a:
            raise ValueError("freeze_lora_a=true needs kind=lora")
        return self


Beta = Annotated[float, Ge(0), Lt(1)]


class OptimSettings(Schema):
    """AdamW and its schedule for one stage (warmup: a fraction of the steps or a count, not both)."""

    lr: PositiveFloat
    weight_decay: NonNegativeFloat
    adam_beta1: Beta
    adam_beta2: Beta
    scheduler: SCHEDULERS
    warmup_ratio: Fraction
    warmup_steps: NonNegativeInt

    @model_validator(mode="after")
    def _one_warmup(self):
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("warmup_ratio and warmup_steps are both set; set one of them to 0")
        return self


class AlignSettings(Schema):
    """The alignment stage (``conf/align/``)."""

    seed: int
    adapter: AdapterSettings
    optim: OptimSettings
    batch_size: PositiveInt
    grad_accum: PositiveInt
    max_steps: PositiveInt | None
    epochs: PositiveInt | None
    max_length: PositiveInt
    num_harmful: NonNegativeInt | None
    num_benign: NonNegativeInt | None
    num_task: NonNegativeInt
    defense_start: Annotated[float, Ge(0), Lt(1)]
    benign_targets: Literal["bundled", "self"]
    self_max_new_tokens: PositiveInt

    @model_validator(mode="after")
    def _length(self):
        if self.max_steps is None and self.epochs is None:
            raise ValueError("max_steps and epochs are both null; set one (align.max_steps=<n> or align.epochs=<n>)")
        return self


class DistanceCapSettings(Schema):
    """``attack=distance_cap``: the ball the attack's update is projected into after every step."""

    max_distance: PositiveFloat
    space: Literal["merged", "params"]


class AttackSettings(Schema):
    """The user's fine-tuning (``conf/attack/``); the tiers set its scale (``conf/tier/``)."""

    name: NonEmptyStr
    num_samples: PositiveInt
    poison_ratio: Fraction
    data_seed: int
    epochs: PositiveInt
    lr: PositiveFloat
    weight_decay: NonNegativeFloat
    adam_beta1: Beta
    adam_beta2: Beta
    scheduler: SCHEDULERS
    warmup_ratio: Fraction
    warmup_steps: NonNegativeInt
    batch_size: PositiveInt
    grad_accum: PositiveInt
    ce_normalization: Literal["micro_batch", "window"]
    max_length: PositiveInt
    keep_adapter: bool
    trigger: NonEmptyStr | None
    trigger_position: Literal["prefix", "suffix"]
    response_prefix: NonEmptyStr | None
    distance_cap: DistanceCapSettings | None

    @model_validator(mode="after")
    def _one_warmup(self):
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("warmup_ratio and warmup_steps are both set; set one of them to 0")
        return self

    def optim(self) -> dict[str, Any]:
        """The optimizer keys, as ``OptimSettings`` holds them for the alignment stage."""
        return self.model_dump(include=set(OptimSettings.model_fields))


class DuringAttackSettings(Schema):
    """``eval.during_attack``: evaluations along the attack (0 = off)."""

    every: NonNegativeInt
    unit: Literal["epoch", "step"]
    collapse_threshold: Percent
    num_harmful: PositiveInt | None
    num_benign: PositiveInt | None
    num_task: PositiveInt | None


class DiagnosticsSettings(Schema):
    """``eval.diagnostics``: what moves while safety erodes, measured without generation."""

    enabled: bool
    every: PositiveInt
    num_prompts: PositiveInt


class ContinuousSettings(Schema):
    """``eval.continuous``: transformers' continuous batching (``eval.backend=continuous``)."""

    page_size: Annotated[int, Ge(4)]  # transformers needs at least 4 tokens per page
    max_batch_tokens: PositiveInt
    num_blocks: PositiveInt | None


class VLLMSettings(Schema):
    """``eval.vllm``: generation by vLLM in a separate process (``eval.backend=vllm``)."""

    python: NonEmptyStr | None
    weights: Literal["merged", "adapter"]
    dtype: Literal["auto", "float32", "float16", "bfloat16"]
    gpu_memory_utilization: Annotated[float, Gt(0), Le(1)]
    max_model_len: PositiveInt | None
    enforce_eager: bool
    offload: bool
    seed: NonNegativeInt


class EvalSettings(Schema):
    """The evaluation (``conf/eval/``): generation backend and lengths, batch size, prompts per pool."""

    before_attack: bool
    backend: Literal["hf", "continuous", "vllm"]
    continuous: ContinuousSettings
    vllm: VLLMSettings
    max_new_tokens: PositiveInt
    task_max_new_tokens: PositiveInt
    batch_size: PositiveInt
    num_harmful: PositiveInt | None
    num_benign: PositiveInt | None
    num_task: PositiveInt | None
    during_attack: DuringAttackSettings
    diagnostics: DiagnosticsSettings


class TrainerSettings(Schema):
    """The keys of ``pytorch_lightning.Trainer`` this project sets; any other Trainer argument passes through."""

    model_config = ConfigDict(extra="allow")

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"]
    devices: PositiveInt
    precision: Literal["32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true", "64"]
    gradient_clip_val: PositiveFloat | None
    deterministic: bool
    enable_progress_bar: bool


class WandbSettings(Schema):
    """Where each job's W&B run goes (offline unless WANDB_MODE says otherwise)."""

    project: NonEmptyStr
    entity: NonEmptyStr | None
    group: NonEmptyStr
    job_type: NonEmptyStr
    mode: Literal["online", "offline", "disabled", "shared", "dryrun", "run"]


class LoggerSettings(Schema):
    wandb: WandbSettings


class PathsSettings(Schema):
    output_dir: NonEmptyStr
    cache_dir: NonEmptyStr


class SearchSettings(Schema):
    """The attacker's objective of a worst-case search (``conf/search/attacker.yaml``, ``sbr_bench.search``)."""

    utility_floor: Annotated[float, Gt(0), Le(1)]  # a fraction of the reference FA
    reference_fa: Percent | None


class JobSettings(Schema):
    """The whole job config, typed. Plug-in groups are checked but kept as configs (Hydra builds them)."""

    seed: int
    experiment_name: NonEmptyStr
    tags: list[str]
    prompt_format: Literal["chat", "alpaca"]
    resume: bool
    paths: PathsSettings
    align: AlignSettings | None
    adapter: AdapterSettings
    eval: EvalSettings
    attack: AttackSettings
    trainer: TrainerSettings
    logger: LoggerSettings | None
    model: dict[str, Any]
    data: dict[str, Any]
    defense: dict[str, Any]
    stack: dict[str, Any] | None = None  # absent unless defense@stack=<option>
    judge: dict[str, Any]
    search: SearchSettings | None = None  # absent unless search=attacker

    @field_validator("align", mode="before")
    @classmethod
    def _align_skipped(cls, value):
        # A defense's paper protocol (conf/protocol_tier/) writes its alignment recipe over align.*;
        # with align=none there is no align option underneath, only those values (never align.seed).
        if isinstance(value, dict) and "seed" not in value:
            raise ValueError(
                "the job has no alignment stage (align=none, the instruct models' pick), but its defense acts "
                "there and its paper protocol sets the alignment recipe; add align=sft"
            )
        return value

    @model_validator(mode="after")
    def _stages_agree(self):
        if self.adapter.kind == "continue" and (self.align is None or self.align.adapter.kind != "lora"):
            raise ValueError(
                "adapter.kind=continue trains the alignment's LoRA adapter, but "
                + ("align=none has no alignment stage" if self.align is None else "align.adapter.kind is full")
                + "; use adapter=lora (a fresh LoRA) or an align option with a LoRA adapter (align=sft)"
            )
        cap = self.attack.distance_cap
        if cap is not None and cap.space == "merged" and self.adapter.kind == "continue":
            raise ValueError(
                "attack.distance_cap.space=merged measures a fresh LoRA's update (B starts at 0), but "
                "adapter=continue starts from the alignment's LoRA; use attack.distance_cap.space=params"
            )
        low_precision = str(self.model.get("dtype")) in ("bfloat16", "float16") or self.trainer.precision in (
            "bf16-true",
            "16-true",
        )
        adapters = {"adapter": self.adapter, "align.adapter": self.align.adapter if self.align else None}
        full = [name for name, adapter in adapters.items() if adapter is not None and adapter.kind == "full"]
        if low_precision and full:
            raise ValueError(
                f"{full[0]}.kind=full on {self.model.get('dtype')} weights (precision {self.trainer.precision}): "
                "AdamW updates of lr ~1e-5 are below the bf16 rounding step of the weights and are lost; load the "
                "model in fp32 (model.dtype=float32) and train in trainer.precision=bf16-mixed (fp32 master weights)"
            )
        return self


# The order in which groups are checked: the first bad value is the one reported.
PLUGINS = ("model", "data", "defense", "stack", "judge")


def plain(node: Any) -> Any:
    """A config node as plain Python values, interpolations resolved where they can be.

    ``paths.output_dir`` is ``${hydra:runtime.output_dir}``, which exists only once Hydra has started
    the job; checked before that (the sweep pre-check), such a value stays as written.
    """
    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException:
        if not OmegaConf.is_dict(node):
            return OmegaConf.to_container(node, resolve=False)
    return {key: child(node, key) for key in node}


def child(node: DictConfig, key: str) -> Any:
    """``node[key]`` as plain values; an interpolation that cannot be resolved yet stays as written."""
    try:
        value = node[key]
    except OmegaConfBaseException:
        return OmegaConf.to_container(node, resolve=False)[key]
    return plain(value)


def validate_job(cfg: DictConfig) -> JobSettings:
    """The typed settings of the job; ConfigError with one line for the first bad value."""
    data = {key: child(cfg, key) for key in cfg if key != "hydra"}
    settings = check(JobSettings, data, "")  # first: it needs no import of the plug-ins' modules
    for key in PLUGINS:
        if data.get(key) is not None:
            check_plugin(data[key], key)
    return settings
