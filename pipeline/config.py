"""Validated configuration: one pydantic schema for every YAML file in `configs/`.

Unknown keys and wrong types are errors that name the key and the file that brought it. Every
command takes one or more `--config FILE` (later files override earlier ones key by key, so a
file can be a layer such as configs/clare-paper.yaml) plus repeatable `--set dotted.key=value`
overrides, applied last and before validation so that an override is checked exactly like a
value in a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)

from clare.errors import ConfigError, short_repr

# Every on/off environment variable clare reads; the CLI checks them all before a command runs,
# so a bad value is never met first inside a check that reports failures as findings.
ENV_SWITCHES = ("CLARE_MMAP", "CLARE_ZARRS", "CLARE_HASH_CACHE")
_SWITCH_ON = frozenset({"", "1", "on", "true", "yes"})
_SWITCH_OFF = frozenset({"0", "off", "false", "no"})


def env_switch(name: str) -> bool:
    """Whether the on/off environment variable `name` is on (unset or empty: on).

    Why one reader: CLARE_MMAP=false once left mapping on without a word (only "0" counted),
    and CLARE_HASH_CACHE took only "off". Every switch now reads 0/1, off/on, false/true and
    no/yes alike, and any other value stops the command naming the variable.
    """
    value = os.environ.get(name, "")
    word = value.strip().lower()
    if word in _SWITCH_ON:
        return True
    if word in _SWITCH_OFF:
        return False
    raise ConfigError(f"environment variable {name}={short_repr(value, 30)}: expected 0 or 1 "
                      f"(or off/on, false/true, no/yes); set {name}=0 to turn it off, unset it for the default")


def check_env_switches() -> None:
    """Raise ConfigError naming the first of ENV_SWITCHES set to a value that is not on/off."""
    for name in ENV_SWITCHES:
        env_switch(name)


class _Strict(BaseModel):
    # NaN and infinities are never a meaningful setting (fit.lr=nan, blur_sigma=[1, inf]).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- data


class SubsetSpec(_Strict):
    """One named subset: a DeepfakeBench JSON list or a `<folder>/{real,fake}` tree."""

    name: str
    list: str | None = Field(
        default=None, description="JSON list file relative to data.lists_dir (default <name>.json)"
    )
    folder: str | None = Field(
        default=None, description="folder layout <root>/<folder>/{real,fake}/... instead of a list"
    )
    json_split: str | None = Field(
        default=None, description="split key inside the JSON list (default: the split prepared)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> SubsetSpec:
        if self.list is not None and self.folder is not None:
            raise ValueError(f"subset '{self.name}' names both a list and a folder; keep one")
        return self


# Which frames of a video the index keeps (see clare.data.df40.sample_frame_indices).
FrameSampling = Literal["first", "even"]


class FramesPerVideo(_Strict):
    train: int = Field(default=32, ge=1)
    test: int = Field(default=8, ge=1)


def _default_label_suffixes() -> dict[str, Literal[0, 1]]:
    return {"_real": 0, "_fake": 1}


class DataConfig(_Strict):
    root: Path = Field(description="dataset root that listed frame paths are relative to")
    lists_dir: Path | None = Field(
        default=None, description="folder of DeepfakeBench JSON lists (None: folder layout only)"
    )
    prefix_map: dict[str, str] = Field(
        default_factory=lambda: {"deepfakes_detection_datasets/": ""},
        description="rewrites of the leading part of listed paths, applied before joining root",
    )
    label_map: dict[str, Literal[0, 1]] = Field(
        default_factory=dict, description="explicit label name -> 0 (real) / 1 (fake)"
    )
    label_suffixes: dict[str, Literal[0, 1]] = Field(
        default_factory=_default_label_suffixes,
        description="case-insensitive suffix rule used when a name is not in label_map",
    )
    frames_per_video: FramesPerVideo = Field(default_factory=FramesPerVideo)
    frame_sampling: FrameSampling = Field(
        default="even",
        description="which frames of a video to keep: the first N in list order (DeepfakeBench, "
        "the published DF40 protocol) or N evenly spaced positions",
    )
    on_missing: Literal["error", "skip"] = "skip"
    on_label_conflict: Literal["error", "skip"] = Field(
        default="error",
        description="one image listed as real and as fake: stop with an error naming both "
        "lists, or drop every entry of it and count them (prepare's 'label conflicts')",
    )
    index_dir: Path = Path("stores/index")
    train: list[SubsetSpec] = Field(default_factory=list)
    test: list[SubsetSpec] = Field(default_factory=list)

    @field_validator("train", "test", mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        # A bare string is shorthand for {name: <string>}.
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value


# --------------------------------------------------------------------------- models


class StableDiffusionConfig(_Strict):
    # The maintained copy of SD1.5 (runwayml/stable-diffusion-v1-5 was removed in 2024).
    pretrained: str = Field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="hub id or local folder with vae/unet/scheduler/text_encoder/tokenizer "
        "(`clare models download` writes one)",
    )
    revision: str | None = Field(
        default=None, description="hub branch, tag or commit when pretrained is a hub id"
    )


class ClipConfig(_Strict):
    model: str = Field(
        default="ViT-L-14",
        description="open_clip model name; a local copy of OpenAI's weights needs ViT-L-14-quickgelu",
    )
    pretrained: str = Field(
        default="openai",
        description="open_clip tag (builds the tag's activation) or local checkpoint file",
    )
    model_config_file: Path | None = Field(
        default=None, description="open_clip model config JSON to register (custom/tiny models)"
    )
    input: Literal["open_clip", "clare-paper"] = Field(
        default="open_clip",
        description="CLIP input recipe: the model's own transform (shorter-side bicubic resize, "
        "centre crop, OpenAI mean/std) or the CLaRE code's (cv2-style read, .png re-encoded as "
        "JPEG q95 from the BGR array, square cubic resize, mean=std=0.5); part of the fingerprint",
    )


class ModelsConfig(_Strict):
    sd: StableDiffusionConfig = Field(default_factory=StableDiffusionConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    local_files_only: bool = Field(
        default=False, description="never contact a hub (implied when paths are local)"
    )


# --------------------------------------------------------------------------- stage one


class LareConfig(_Strict):
    timestep: int = Field(default=200, ge=0, le=999)
    ensemble: int = Field(default=4, ge=1)
    image_size: int = Field(default=256, ge=64, multiple_of=8)
    prompt: str = "a photo of a face"


# Ranges of the pixel degradations, shared by the augmentations here and by the fixed
# perturbations of robustness stores (clare.data.views). A sigma far beyond any image side
# blurs to a flat colour and only costs time.
JPEG_QUALITY_RANGE = (1, 100)
BLUR_SIGMA_MAX = 100.0


class AugmentConfig(_Strict):
    """Seeded augmentations of views >= 1 (view 0 is always the clean image)."""

    crop_scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (
        0.8, 1.0)
    flip_p: float = Field(default=0.5, ge=0, le=1)
    jpeg_p: float = Field(default=0.5, ge=0, le=1)
    jpeg_quality: tuple[
        Annotated[int, Field(ge=JPEG_QUALITY_RANGE[0], le=JPEG_QUALITY_RANGE[1])],
        Annotated[int, Field(ge=JPEG_QUALITY_RANGE[0], le=JPEG_QUALITY_RANGE[1])],
    ] = (40, 100)
    blur_p: float = Field(default=0.3, ge=0, le=1)
    blur_sigma: tuple[Annotated[float, Field(gt=0, le=BLUR_SIGMA_MAX)],
                      Annotated[float, Field(gt=0, le=BLUR_SIGMA_MAX)]] = (0.1, 2.0)

    @field_validator("crop_scale", "jpeg_quality", "blur_sigma")
    @classmethod
    def _low_then_high(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"expected [low, high] with low <= high, got {list(value)}")
        return value


class ExtractConfig(_Strict):
    batch_size: int = Field(default=16, ge=1)
    views: int = Field(default=1, ge=1)
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    workers: int = Field(default=1, ge=1)
    decode_threads: int = Field(default=2, ge=1)
    cpu_threads: int = Field(
        default=1,
        ge=1,
        description="torch intra-op threads per worker on CPU; CPU kernels may sum in another "
        "order with another thread count, so keep it fixed for bit-identical stores",
    )
    shard_rows: int | None = Field(
        default=None, ge=1, description="rows per shard (None: about 64 MB of tokens per shard)"
    )
    min_image_size: int = Field(default=8, ge=1, description="smaller images become failed rows")
    max_image_pixels: int = Field(
        default=89_478_485, ge=1,
        description="most pixels an image may hold, as decoded and after every resize; "
        "larger images become failed rows",
    )
    max_aspect_ratio: float = Field(
        default=20.0, ge=1,
        description="longer side / shorter side above this: a failed row (CLIP's shorter-side "
        "resize would otherwise blow a thin strip up to millions of pixels)",
    )
    max_failures: float = Field(default=1.0, ge=0, le=1)
    # Dask's own default is 30 s, then retries: an unreachable --scheduler took 40 s to report.
    connect_timeout: float = Field(
        default=5.0, gt=0, le=600,
        description="seconds to wait for a --scheduler to answer before giving up",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


# --------------------------------------------------------------------------- stage two


class PromptConfig(_Strict):
    n_ctx: int = Field(default=16, ge=1)
    ctx_init: str | None = Field(default=None, description="initialise context from these words")
    class_token_position: Literal["end", "front", "middle"] = "end"
    class_specific: bool = False
    classnames: tuple[str, str] = ("real", "fake")
    ctx_init_std: float = Field(default=0.02, gt=0, description="std of random context vectors")
    meta_net_reduction: int = Field(
        default=16, ge=1, description="CoCoOp meta-net hidden width = feature width / this"
    )


class HeadConfig(_Strict):
    """Sizes of the trainable head (docs/design.md §3.1); the widths E, W, g come from CLIP."""

    heads: int = Field(default=8, ge=1, description="attention heads (one LaRE bias map each)")
    head_dim: int = Field(default=64, ge=1, description="query/key/value width per head")
    lift_widths: tuple[PositiveInt, ...] = Field(
        default=(32, 64, 128, 256), description="v2: 1x1 conv widths lifting the LaRE map to W"
    )
    gate_hidden: int = Field(default=128, ge=1, description="channel-gate MLP hidden width")
    pos_init_std: float = Field(default=0.02, gt=0, description="std of positional embeddings")


def reserved_name_problem(name: str, what: str) -> str | None:
    """Why `name` cannot be the name of a run, report or store folder, or None.

    Names that begin with "." are clare's own: `.<name>.staging`, `.<name>.old`,
    `.<name>.lock` and `.<name>.publishing` beside a run or report, `.lock` in a store. A run
    named `.demo.old` would be deleted by the next `clare fit --name demo`.
    """
    if name.startswith("."):
        return (f"{what} '{name}' begins with '.', which clare reserves for its own working "
                "files (.<name>.staging, .<name>.old, .<name>.lock); choose a name without it")
    return None


NOT_APPLICABLE = "none"  # a setting the module does not use (strategy of lare, attention of clipping)


def effective_spec(module: str, strategy: str, attention: str) -> dict[str, str]:
    """What a module really uses: `lare` has no prompts and always v1 attention; `clipping` no
    attention. A setting it does not use is NOT_APPLICABLE, whatever the config said."""
    if module == "lare":
        return {"module": module, "strategy": NOT_APPLICABLE, "attention": "v1"}
    if module == "clipping":
        return {"module": module, "strategy": strategy, "attention": NOT_APPLICABLE}
    return {"module": module, "strategy": strategy, "attention": attention}


class DetectorConfig(_Strict):
    """Everything that shapes a detector besides the CLIP model it is built on.

    `clare fit` reads it from the `fit` section; a trained model file records it, so loading
    a run needs nothing else (see clare.models.detector.Detector.save).
    """

    module: Literal["fusion", "lare", "clipping"] = "fusion"
    strategy: Literal["coop", "cocoop"] = "coop"
    attention: Literal["v1", "v2"] = "v2"
    dropout: float = Field(default=0.1, ge=0, lt=1)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)


class FitConfig(DetectorConfig):
    """The detector's settings (module, strategy, attention, dropout, prompt, head) and training."""

    name: str | None = Field(default=None, description="run name (default: module-strategy)")
    epochs: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(default=5e-4, gt=0)
    prompt_lr: float | None = Field(default=None, gt=0, description="default: lr")
    weight_decay: float = Field(default=5e-4, ge=0)
    prompt_weight_decay: float | None = Field(default=None, ge=0, description="default: weight_decay")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    warmup_steps: int = Field(default=0, ge=0)
    warmup_epochs: int = Field(
        default=0, ge=0,
        description="whole epochs at warmup_lr before the cosine (the CLaRE code: 1 of 2); "
        "set this or warmup_steps, not both",
    )
    warmup_lr: float = Field(default=1e-5, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    val_fraction: float = Field(default=0.05, gt=0, lt=1)
    val_every: int | None = Field(default=None, ge=1, description="steps (None: every epoch)")
    # Which validation point's weights are kept (clare.selection): auc_loss breaks the ties of
    # a saturated validation AUC by the validation loss instead of keeping the first point.
    select: Literal["auc_loss", "loss", "last", "auc_first"] = Field(
        default="auc_loss",
        description="checkpoint kept: auc_loss (highest val AUC, then lowest val loss), loss, "
        "last, or auc_first (the old first-best-AUC rule)",
    )
    select_auc_digits: int = Field(default=3, ge=1, le=12,
                                   description="decimals at which auc_loss compares val AUC")
    # 4, not 2: on DF40 a shard's real frames are listed ~10 times each, and their copies must
    # spread over enough batches (a window of 2 gives a median of 89 videos per batch, 4 gives 108).
    shuffle_window: int = Field(default=4, ge=1, description="shards shuffled together")
    prefetch: int = Field(default=2, ge=0, description="batches read ahead in the background")
    cache: Literal["auto", "ram", "none"] = Field(
        default="auto",
        description="hold the selected rows in RAM after the first read (ram), read the store "
        "every epoch (none), or ram when they take at most half the available memory (auto)",
    )
    device: str = "auto"
    amp: bool = True

    @model_validator(mode="after")
    def _one_warmup(self) -> FitConfig:
        if self.warmup_steps and self.warmup_epochs:
            raise ValueError("fit.warmup_steps and fit.warmup_epochs are both set; keep one "
                             "(warm-up in steps or in whole epochs)")
        return self

    def detector(self) -> DetectorConfig:
        return DetectorConfig.model_validate(self.model_dump(include=set(DetectorConfig.model_fields)))

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str | None) -> str | None:
        # The name is a folder under paths.runs and paths.reports: `../x` would write elsewhere.
        if value is not None and ("/" in value or "\\" in value or value in (".", "..")
                                  or "\0" in value):
            raise ValueError("a run name is one folder name under paths.runs, without '/' or "
                             "'..'; pick a plain name such as fusion-coop")
        problem = None if value is None else reserved_name_problem(value, "run name")
        if problem:
            raise ValueError(problem)
        return value


class EvalConfig(_Strict):
    batch_size: int = Field(default=256, ge=1)
    stores: list[str] = Field(default_factory=lambda: ["test"])
    perturbations: list[str] = Field(
        default_factory=list, description="robustness stores, e.g. jpeg=50 or blur=1.0"
    )
    device: str = "auto"
    lare_examples: int = Field(default=4, ge=0)


class PredictConfig(_Strict):
    """`clare predict`: scoring new images and videos with a trained run."""

    video_frames: int = Field(
        default=8, ge=1, description="evenly spaced frames scored per video (DF40's test protocol)"
    )


class PathsConfig(_Strict):
    stores: Path = Path("stores")
    runs: Path = Path("runs")
    reports: Path = Path("reports")


class DemoConfig(_Strict):
    """Where the demo keeps its generated data and tiny models (built by `clare prepare`)."""

    data_out: Path | None = None
    models_out: Path | None = None


class Config(_Strict):
    # numpy and torch take seeds in [0, 2^63); a negative one fails deep inside them.
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    data: DataConfig
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    lare: LareConfig = Field(default_factory=LareConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    fit: FitConfig = Field(default_factory=FitConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    demo: DemoConfig | None = None

    def run_name(self) -> str:
        return self.fit.name or f"{self.fit.module}-{self.fit.strategy}"
