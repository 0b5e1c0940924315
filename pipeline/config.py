"""Validated configuration: one pydantic schema for every YAML file in `configs/`.

Unknown keys and wrong types are errors that name the key and the file that brought it. Every
command takes one or more `--config FILE` (later files override earlier ones key by key, so a
file can be a layer such as configs/clare-paper.yaml) plus repeatable `--set dotted.key=value`
overrides, applied last and before validation so that an override is checked exactly like a
value in a file.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from clare.errors import ConfigError, one_line, short_repr
from clare.files import read_record_bytes

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


# --------------------------------------------------------------------------- loading

# A key path or a quoted value in a message is cut to this many characters.
_SHOWN = 80


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {one_line(dotted, _SHOWN)}: '{one_line(key, _SHOWN)}' is not a "
                              f"section in {source}")
        node = child
    node[keys[-1]] = value


def _yaml_value(raw: str) -> tuple[bool, Any]:
    """(True, value) when `raw` is one whole YAML node that keeps every character's meaning:
    a plain scalar that is not a string (a number, a boolean, null), a quoted string, a flow
    [list] or {mapping}. (False, None) for anything else, which is then taken as text: a plain
    string (YAML would drop a `#` comment and fold a newline into a space), block syntax
    (`a: b`, `- a`), trailing text, a syntax error."""
    if not raw or raw != raw.strip():
        return False, None
    loader = yaml.SafeLoader(raw)
    try:
        node = loader.get_single_node()
        if node is None or node.start_mark.index != 0 or node.end_mark.index != len(raw):
            return False, None
        value = loader.construct_document(node)
    except yaml.YAMLError:
        return False, None
    finally:
        loader.dispose()
    if isinstance(node, yaml.ScalarNode):
        plain_string = node.style is None and isinstance(value, str)
        return (False, None) if plain_string else (True, value)
    # Only [flow] and {flow} collections: `a photo: close-up` or `- x` read as text.
    flow = isinstance(node, yaml.nodes.CollectionNode) and node.flow_style
    return (True, value) if flow else (False, None)


# The number forms of YAML 1.2's core schema (and of Python's int() and float()), decimal only:
# YAML 1.1, which PyYAML reads, also takes 010 as octal 8, 0x10 as 16, 1_000 and 1:30 as 90.
_DECIMAL_INT = re.compile(r"[-+]?[0-9]+")
_DECIMAL_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")


def _as_decimal(raw: str, value: Any) -> Any:
    """A plain scalar that YAML 1.1 read as a number, read as the schema reads numbers: decimal
    (010 is 10), and any other form (0x10, 1_000, 1:30) kept as the text typed, which a number
    setting then refuses naming the key."""
    if _DECIMAL_INT.fullmatch(raw):
        return int(raw, 10)
    if _DECIMAL_FLOAT.fullmatch(raw):
        return value if raw.lstrip("+-").startswith(".") and raw[-1].isalpha() else float(raw)
    return raw


def _unwrap_optional(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _setting_is_text(dotted: str) -> bool:
    """Whether the config key `dotted` holds text (a str or a path): `--set lare.prompt=0x10`
    is then the text "0x10", whatever YAML would make of it."""
    model: Any = Config
    annotation: Any = None
    for key in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or key not in model.model_fields:
            return False
        annotation = _unwrap_optional(model.model_fields[key].annotation)
        model = annotation
    return annotation in (str, Path)


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value`. The value arrives verbatim: numbers, booleans, null, quoted strings
    and [lists] / {mappings} are read as YAML when that keeps every character; any other text
    (`a photo #1`, a value with a newline) is the string exactly as typed."""
    if "=" not in text:
        raise ConfigError(f"--set {short_repr(text, _SHOWN)}: expected dotted.key=value, e.g. --set fit.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {short_repr(text, _SHOWN)}: empty key; expected dotted.key=value")
    is_yaml, value = _yaml_value(raw)
    if is_yaml and isinstance(value, (bool, int, float)) and _setting_is_text(key):
        return key, raw  # a text setting takes the text as typed: lare.prompt=0x10 is "0x10"
    if is_yaml and isinstance(value, (int, float)) and not isinstance(value, bool):
        return key, _as_decimal(raw, value)
    if is_yaml:
        return key, value
    if raw.lstrip()[:1] in ("[", "{", '"', "'"):
        # Meant as YAML (a list, a mapping, a quoted string) but not one whole valid node.
        raise ConfigError(f"--set {one_line(key, _SHOWN)}: value {short_repr(raw, _SHOWN)} is not one "
                          "valid YAML value; fix the brackets or quotes, or quote the whole value")
    return key, raw


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One bounded line for a failed validation: `<source>: key 'a.b': <why> (got <value>)`.
    Any file read into a pydantic model (config, run record) reports its errors with it."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    key = one_line(".".join(str(p) for p in err["loc"]), _SHOWN) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'; remove it or fix its spelling"
    if kind == "missing":
        return f"{source}: required key '{key}' is missing; add it"
    got = err.get("input")
    shown = "a mapping" if isinstance(got, dict) else short_repr(got, _SHOWN)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: key '{key}': {one_line(err['msg'], _SHOWN * 2)} (got {shown}){more}"


def read_yaml_mapping(path: Path, what: str, hint: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; every way it can be unreadable or malformed
    is a ConfigError naming the file (`what` it is; `hint`: how to pass another one)."""
    try:
        if not path.is_file():
            raise ConfigError(f"{path}: {what} not found; {hint}")
        text = read_record_bytes(path).decode("utf-8")
        tree = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or one_line(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a {what}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: malformed YAML{at}; fix the syntax") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, not {type(tree).__name__}")
    return tree


def load_config_dict(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "config file", "pass an existing --config FILE")


# Where a value came from when nobody set it.
DEFAULT_ORIGIN = "default"
SET_ORIGIN = "--set"


@dataclass
class ConfigLayers:
    """Config files and `--set` overrides merged into one tree, remembering which layer gave
    each value: `origins` maps the dotted path of every leaf set to the index of its layer in
    `names` (a file path, or `--set <key>`)."""

    tree: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    origins: dict[str, int] = field(default_factory=dict)

    def _claim(self, path: str, value: Any, layer: int) -> None:
        """`path` now holds `value` from `layer`: whatever lay below it came from elsewhere."""
        for known in [p for p in self.origins if p == path or p.startswith(path + ".")]:
            del self.origins[known]
        if isinstance(value, dict) and value:
            for key, child in value.items():
                self._claim(f"{path}.{key}", child, layer)
        else:
            self.origins[path] = layer

    def _merge(self, node: dict[str, Any], layer_tree: dict[str, Any], layer: int,
               prefix: str) -> None:
        for key, value in layer_tree.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                self._merge(node[key], value, layer, f"{path}.")
            else:
                node[key] = copy.deepcopy(value)
                self._claim(path, value, layer)

    def add_file(self, path: Path) -> None:
        """A later file overrides earlier ones key by key (mappings merge; lists and scalars
        are replaced whole)."""
        self.names.append(str(path))
        try:
            self._merge(self.tree, load_config_dict(path), len(self.names) - 1, "")
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply to be a config file") from None

    def add_override(self, text: str) -> None:
        key, value = parse_override(text)
        self.names.append(f"{SET_ORIGIN} {one_line(key, _SHOWN)}")
        _set_dotted(self.tree, key, value, self.origin_of(key.rsplit(".", 1)[0]))
        self._claim(key, value, len(self.names) - 1)

    def origin_of(self, dotted: str) -> str:
        """The layer that gave `dotted`: its own, else the first layer that gave a key below
        it (the file that brought an unknown section), else the one that gave the section it
        is in; `default` when no layer set it."""
        if dotted in self.origins:
            return self.names[self.origins[dotted]]
        below = [i for p, i in self.origins.items() if p.startswith(dotted + ".")]
        if below:
            return self.names[min(below)]
        parts = dotted.split(".")
        for end in range(len(parts) - 1, 0, -1):
            above = ".".join(parts[:end])
            if above in self.origins:
                return self.names[self.origins[above]]
        return DEFAULT_ORIGIN

    def source_of_error(self, exc: ValidationError) -> str:
        """The layer to name for the first validation error (every file for a missing key)."""
        loc = ".".join(str(p) for p in exc.errors(include_url=False)[0]["loc"])
        origin = self.origin_of(loc) if loc else DEFAULT_ORIGIN
        if origin == DEFAULT_ORIGIN:
            files = [n for n in self.names if not n.startswith(SET_ORIGIN)]
            return " + ".join(files) or "the config"
        return origin


def config_layers(paths: str | Path | Sequence[str | Path],
                  overrides: Sequence[str] = ()) -> ConfigLayers:
    """The files in order, then the overrides in order, merged (not yet validated)."""
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not files:
        raise ConfigError("no config given; pass --config FILE (repeatable: later files win)")
    layers = ConfigLayers()
    for path in files:
        layers.add_file(path)
    for text in overrides:
        layers.add_override(text)
    return layers


def validate_layers(layers: ConfigLayers) -> Config:
    """Validate merged layers; an error names the layer that gave the offending key."""
    try:
        return Config.model_validate(layers.tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, layers.source_of_error(exc))) from None
    except RecursionError:
        raise ConfigError(f"{' + '.join(layers.names)}: a value is nested too deeply to be a "
                          "setting") from None


def load_config(paths: str | Path | Sequence[str | Path],
                overrides: Sequence[str] = ()) -> Config:
    """Read, layer, override and validate config files; any problem raises ConfigError naming
    the file (or `--set` key) and the key."""
    return validate_layers(config_layers(paths, overrides))


def config_origins(cfg: Config, layers: ConfigLayers) -> list[tuple[str, Any, str]]:
    """(dotted key, value, where it came from) for every leaf of a validated config: a file,
    `--set <key>` or `default`. Lists are one leaf."""
    rows: list[tuple[str, Any, str]] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, child in node.items():
                walk(child, f"{prefix}.{key}" if prefix else str(key))
            return
        rows.append((prefix, node, layers.origin_of(prefix)))

    walk(config_to_dict(cfg), "")
    return rows


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain, YAML-safe dictionary (paths as strings, tuples as lists)."""
    return cfg.model_dump(mode="json")
