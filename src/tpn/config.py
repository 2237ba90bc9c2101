"""Typed configuration: dataclasses with defaults, YAML files, dotted overrides.

The dataclass defaults below *are* the mmaction2-equivalent TPN R50 8x8 Kinetics-400
model and the Paddle reproduction's data protocol; a YAML file only states what differs. A config is
loaded with `load_config(name_or_path, overrides)`; unknown keys, wrong types, values out of
range (`RANGES`), duplicate YAML keys and YAML syntax errors are a one-line `ConfigError` that
names the key (or file:line:column), the file or `--set`, and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tpn.errors import TpnError, read_text

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(TpnError):
    """A user-facing configuration error (printed as one line by the CLI)."""


# --------------------------------------------------------------------------- schema
@dataclass
class BackboneConfig:
    # resnet3d: the slow-only 3D ResNet; resnet_tsm: a 2D ResNet with temporal shift (TSM)
    type: Literal["resnet3d", "resnet_tsm"] = "resnet3d"
    depth: Literal[50, 101] = 50
    base_channels: int = 64  # width of the stem; stage i has base_channels * 2**i planes
    stage_blocks: tuple[int, ...] | None = None  # None: the standard blocks of `depth`
    conv1_kernel: tuple[int, int, int] = (1, 7, 7)
    conv1_stride_t: int = 1
    pool1_stride_t: int = 1
    spatial_strides: tuple[int, ...] = (1, 2, 2, 2)
    temporal_strides: tuple[int, ...] = (1, 1, 1, 1)
    inflate: tuple[int, ...] = (0, 0, 1, 1)  # per stage: first 1x1 conv of each block becomes 3x1x1
    out_indices: tuple[int, ...] = (2, 3)
    frozen_stages: int = -1  # -1: none; 0: stem; k: stem and stages 1..k
    norm_eval: bool = False  # keep BN layers in eval mode while training
    with_cp: bool | tuple[int, ...] = False  # activation checkpointing: true for every block, or a list of stages (1-4)
    stem_pad_channels: Literal[0, 4, 8] = 0  # 3D stem: input channels padded with zeros to 4 or 8 (same sums, other GPU kernels)
    stem_2d: bool = False  # 3D stem: the (1,k,k) conv and (1,3,3) max-pool as 2D ops over frames (same model; within 1e-5)
    pretrained2d: str | None = None  # path to a 2D ResNet state_dict to inflate (resnet_tsm: to copy)
    num_segments: int = 8  # resnet_tsm: frames per clip (the input's T), the span of the shift
    shift_div: int = 8  # resnet_tsm: 1/shift_div of the channels shift each way


@dataclass
class NeckConfig:
    enabled: bool = True  # False: plain slow-only model (backbone -> head)
    out_channels: int = 1024
    temporal_scales: tuple[int, ...] = (8, 8)  # per-level max-pool scale over time
    flow: Literal["cascade", "parallel"] = "cascade"
    groups: int = 32  # groups of the temporal-modulation and level-fusion convs


@dataclass
class AuxHeadConfig:
    loss_weight: float = 0.5  # 0 removes the auxiliary head


@dataclass
class HeadConfig:
    num_classes: int | None = 400  # None (null): the number of names in data.label_map
    dropout: float = 0.5
    init_std: float = 0.01


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    aux_head: AuxHeadConfig = field(default_factory=AuxHeadConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # fine-tuning: weights of any checkpoint `load_weights` reads (tpn, mmaction2, official, Paddle) loaded
    # where shapes fit when training starts from scratch; heads of another class count re-initialised
    init_from: str | None = None


@dataclass
class DataConfig:
    format: Literal["list", "mmaction_video", "mmaction_rawframes", "kinetics_csv"] = "list"
    root: str = ""  # videos are read from root / relative path in the list
    train_list: str = ""
    val_list: str = ""
    test_list: str = ""
    label_map: str = ""  # one class name per line (line number = label)
    # clips: clip_len frames frame_interval apart (3D models); segments: the video in clip_len
    # equal segments, one frame each (TSN/TSM; frame_interval unused; test_clips 1 or 2)
    sampling: Literal["clips", "segments"] = "clips"
    clip_len: int = 8
    frame_interval: int = 8
    test_clips: int = 10
    test_crops: Literal[1, 3] = 3
    short_side: int = 256
    crop_size: int = 224
    test_crop_size: int = 256
    train_crop: Literal["random", "random_resized"] = "random"
    flip: float = 0.5
    flip_label_pairs: tuple[tuple[int, int], ...] = ()  # labels a horizontal flip swaps (left/right classes)
    filename_tmpl: str = "img_{:05d}.jpg"  # mmaction_rawframes: frame file names, numbered from 1
    color_jitter: bool = False
    augment_on_device: bool = False  # draw flip/jitter in the loader, apply them on the GPU (CPU time)
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    num_workers: int = 8
    # training on a video shorter than one clip's span: "skip" reports it and uses another
    # sample; "loop" wraps its indices around (mmaction2). Val/test always loop.
    short_videos: Literal["skip", "loop"] = "skip"
    # training clips drawn from one decode of a video (a recipe change, see docs/data.md); 1 = mmaction2
    clips_per_decode: int = 1
    # who decodes training clips (docs/data.md, "Choosing a decoding path"): "pyav" the loader's CPU
    # workers; "nvdec" the GPU (tpn[nvdec]), workers only demux; "hybrid" both, `nvdec_share` of the
    # items on the GPU (null: measured at the first epoch); "auto" in tpn train times training at GPU
    # share 0 and at the measured share and keeps the faster; choice and figures in the log (pyav
    # without a CUDA GPU or PyNvVideoCodec). Val and test decode on the CPU.
    decoder: Literal["auto", "pyav", "nvdec", "hybrid"] = "pyav"
    nvdec_threads: int = 4  # decoder threads (each its own NVDEC sessions and CUDA stream) per process
    nvdec_share: float | None = None
    # the most pixels (width x height) a video's frames may have, as its header declares them and
    # after the short-side resize; a larger video is reported unreadable before it is decoded
    # (a 16384x16 frame resized to short side 256 is 67M pixels: 15 GiB for a 10-clip 8x8 test)
    max_frame_pixels: int = 4096 * 4096


@dataclass
class TrainConfig:
    epochs: int = 150
    batch_size: int = 8  # per process
    lr: float = 0.01  # learning rate at `lr_batch_size`; scaled linearly with the total batch
    lr_batch_size: int = 64
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = True  # False exempts BN parameters and biases from decay
    backbone_lr_mult: float = 1.0  # the backbone's learning rate x this (neck and heads x 1); fine-tuning
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[int, ...] = (75, 125)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    clip_grad: float = 40.0  # max L2 norm; 0 disables
    accum_steps: int = 1
    val_interval: int = 1  # epochs; 0 disables
    amp: bool = True  # autocast on CUDA (CPU always fp32)
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"  # float16 (GPUs without bf16) adds a grad scaler
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the model (CUDA only)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"
    # reduce-overhead adds CUDA graphs (577 clips/s at batch 32 vs 553.5-568.5 for default in other runs: docs/training.md)
    # with compile on CUDA: coordinate-descent tuning of inductor's generated Triton kernels (BN
    # statistics, normalisation, ReLU); the tuning runs at their first call and lengthens the warm-up
    inductor_tuning: bool = False
    # with compile: the share of the activations torch.compile may keep for the backward (1.0 keeps
    # what is fastest); lower values recompute cheap ops (BN apply, ReLU) in the backward instead
    activation_budget: float = 1.0
    # CUDA: training BatchNorm (+ residual add) (+ ReLU) as Triton kernels (tpn.models.fused_bn; the
    # same model). auto: on without compile (measured 1.50-1.53x the bf16 eager step), off with compile
    # (the compiled step was faster without them); docs/training.md
    fused_bn: bool | Literal["auto"] = "auto"
    cudnn_benchmark: bool = True
    sync_bn: bool = False
    seed: int = 0
    keep_last: int = 3
    log_interval: int = 20  # iterations
    ckpt_interval_iters: int = 0  # also checkpoint every N iterations inside an epoch (0: per epoch only)


@dataclass
class TestConfig:
    batch_size: int = 1  # videos per batch (each brings clips x crops views)
    fold_bn: bool = True  # fold BatchNorm into the convs for testing (faster; logits within 1e-5 relative of the unfolded model's)
    # autocast dtype of test/predict: auto = the training execution's (train.amp, train.amp_dtype on
    # CUDA; fp32 on CPU); fp32, bf16 or fp16 on any device (tpn test/predict --precision)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # with train.compile on CUDA: 1x1x1 convs as GEMMs autotuned with their bias/add/ReLU fused
    # (inductor max-autotune); measured +1.9% 30-view videos/s after ~4 min of tuning (docs/training.md)
    gemm_tuning: bool = False


@dataclass
class Config:
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)

    @property
    def videos_per_batch(self) -> int:
        """Videos in one training batch of `train.batch_size` clips: each gives
        `data.clips_per_decode` clips (the load checks the batch holds whole videos). The one
        place that turns clips into videos; samplers and loaders count videos."""
        return self.train.batch_size // self.data.clips_per_decode


# --------------------------------------------------------------------------- loading
def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML file, or a shipped config's name (a directory of that name does not hide it)."""
    p = Path(name_or_path)
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if p.is_file():
        return p
    if p.suffix not in (".yaml", ".yml") and shipped.is_file():
        return shipped
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a config file (give a YAML file or a shipped config name)")
    if p.suffix in (".yaml", ".yml") or p.exists():
        raise ConfigError(f"{p}: config file not found")
    raise ConfigError(f"{name_or_path}: no such config file or shipped config; shipped: "
                      f"{', '.join(available_configs())}")


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a shipped config name or a YAML path, then apply `a.b=c` overrides; check the ranges."""
    path = resolve_config_path(name_or_path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw.setdefault("name", path.stem)
    cfg = apply_overrides(from_dict(Config, raw, source=str(path)), overrides)
    overridden = [item.split("=", 1)[0].strip() for item in overrides]

    def source_of(key: str) -> str:
        return "--set" if any(key == k or key.startswith(k + ".") for k in overridden) else str(path)

    check_ranges(cfg, source_of)
    check_rules(cfg, source_of)
    return cfg


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last one silently: a config would lose a value without a word)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first_line = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {first_line[key] + 1})", key_node.start_mark)
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


# A config is a few hundred values; YAML aliases can make a short file stand for billions (the
# "billion laughs"), which checking and printing the values would walk one by one (hours, or the
# memory runs out): a document standing for more than this is refused.
MAX_YAML_VALUES = 100_000


def _expanded_size(node: yaml.Node, sizes: dict) -> int:
    """Values `node` stands for with every alias written out; a ConfigError for an alias inside itself."""
    if id(node) in sizes:
        if sizes[id(node)] is None:
            raise ConfigError("an alias refers to a value that contains it")
        return sizes[id(node)]
    sizes[id(node)] = None
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [x for pair in node.value for x in pair]
    else:
        children = []
    sizes[id(node)] = 1 + sum(_expanded_size(c, sizes) for c in children)
    return sizes[id(node)]


def load_yaml(text: str, source: str) -> Any:
    """`text` parsed by the strict loader; aliases that expand past `MAX_YAML_VALUES` are refused."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size = _expanded_size(node, {})
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        if size > MAX_YAML_VALUES:
            raise ConfigError(f"{source}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values (an alias "
                              f"bomb?); write the values out")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error or a duplicate key is `file:line:column: problem`."""
    try:
        return load_yaml(read_text(path), str(path))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(x for x in (e.problem, f"({e.context})" if e.context else None) if x)
        raise ConfigError(f"{where}: {what}".replace("\n", " ")) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. model.neck.flow=parallel")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(_unknown(".".join(parts[: depth + 1]), node, "--set"))
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(_unknown(key, node, "--set"))
        try:
            node[parts[-1]] = load_yaml(value, f"--set {key.strip()}") if value.strip() else ""
        except yaml.YAMLError:
            node[parts[-1]] = value
    return from_dict(Config, data, source="--set")


def from_dict(cls: type, raw: dict, source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, checking every key and type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(_unknown(full, {n: None for n in names}, source))
        kwargs[key] = _coerce(hints[key], value, source, full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON and checkpoints."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _unknown(key: str, node: Any, source: str) -> str:
    allowed = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
    return f"{source}: unknown config key '{key}'; allowed here: {allowed}"


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: config key '{key}' must be {expected}, got {value!r}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, source, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, source, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list ({_describe(tp)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(_coerce(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad("a string")
        return str(value)
    raise bad(_describe(tp))


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


# --------------------------------------------------------------------------- value ranges
@dataclass(frozen=True)
class Range:
    """Allowed numbers: lo <= v (lo < v when lo_open), v <= hi (v < hi when hi_open); finite."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


AT_LEAST_1, AT_LEAST_0, POSITIVE = Range(1), Range(0), Range(0, lo_open=True)

# Every numeric field and the values it may take (a list field: each element). A field that
# may be None (null) is checked only when set; booleans are not numbers here.
RANGES: dict[str, Range] = {
    **{f"model.backbone.{k}": AT_LEAST_1 for k in ("base_channels", "stage_blocks", "conv1_kernel", "conv1_stride_t",
                                                   "pool1_stride_t", "spatial_strides", "temporal_strides")},
    "model.backbone.inflate": Range(0, 1),
    "model.backbone.out_indices": Range(0, 3),
    "model.backbone.frozen_stages": Range(-1, 4),
    "model.backbone.with_cp": Range(1, 4),
    "model.backbone.num_segments": AT_LEAST_1,
    "model.backbone.shift_div": Range(2),
    **{f"model.neck.{k}": AT_LEAST_1 for k in ("out_channels", "temporal_scales", "groups")},
    "model.aux_head.loss_weight": AT_LEAST_0,
    "model.head.num_classes": AT_LEAST_1,
    "model.head.dropout": Range(0, 1, hi_open=True),
    "model.head.init_std": AT_LEAST_0,
    **{f"data.{k}": AT_LEAST_1 for k in ("clip_len", "frame_interval", "test_clips", "short_side", "crop_size",
                                         "test_crop_size")},
    "data.flip": Range(0, 1),
    "data.mean": Range(0, 255),
    "data.std": POSITIVE,
    "data.num_workers": AT_LEAST_0,
    "data.clips_per_decode": AT_LEAST_1,
    "data.nvdec_threads": AT_LEAST_1,
    "data.nvdec_share": Range(0, 1),
    "data.max_frame_pixels": AT_LEAST_1,
    "data.flip_label_pairs": AT_LEAST_0,
    **{f"train.{k}": AT_LEAST_1 for k in ("epochs", "batch_size", "lr_batch_size", "accum_steps", "log_interval",
                                          "milestones")},
    "train.gamma": POSITIVE,
    "train.backbone_lr_mult": AT_LEAST_0,
    "train.momentum": Range(0, 1, hi_open=True),
    "train.activation_budget": Range(0, 1, lo_open=True),
    **{f"train.{k}": AT_LEAST_0 for k in ("lr", "weight_decay", "warmup_epochs", "clip_grad", "val_interval",
                                          "keep_last", "ckpt_interval_iters")},
    "train.seed": Range(0, 2**31 - 1),  # seed + rank seeds numpy, which takes 32 bits
    "test.batch_size": AT_LEAST_1,
}


def check_ranges(cfg: Config, source_of) -> None:
    """One-line `ConfigError` for the first value outside `RANGES`; `source_of(key)` names where
    the value came from (the file or --set)."""
    for key, allowed in RANGES.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        for name, v in _leaves(key, value):
            if v is None or isinstance(v, bool) or v in allowed:
                continue
            raise ConfigError(f"{source_of(key)}: config key '{name}' must be {allowed}, got {v!r}")
    batch, k = cfg.train.batch_size, cfg.data.clips_per_decode
    if batch % k:  # a batch holds k clips of each of its videos
        where = " / ".join(dict.fromkeys(source_of(x) for x in ("data.clips_per_decode", "train.batch_size")))
        raise ConfigError(f"{where}: train.batch_size ({batch}) must be a multiple of data.clips_per_decode ({k})")


def check_rules(cfg: Config, source_of) -> None:
    """Rules that tie fields together, checked once at load: values each in range that would
    still fail deep inside a run are one `ConfigError` naming the fields and where they came from."""
    def fail(keys: tuple[str, ...], text: str) -> None:
        raise ConfigError(" / ".join(dict.fromkeys(source_of(k) for k in keys)) + ": " + text)

    m, d = cfg.model, cfg.data
    top = m.backbone.base_channels * 2 ** m.backbone.out_indices[-1] * 4 if m.backbone.out_indices else 0
    g = m.neck.groups
    if m.neck.enabled and top and (m.neck.out_channels % g or top % g):
        fail(("model.neck.groups", "model.neck.out_channels", "model.backbone.base_channels"),
             f"model.neck.groups ({g}) must divide model.neck.out_channels ({m.neck.out_channels}) and the "
             f"backbone's last output channels ({top} = model.backbone.base_channels {m.backbone.base_channels} "
             f"x 2^{m.backbone.out_indices[-1]} x 4)")
    if d.sampling == "segments" and d.test_clips not in (1, 2):
        fail(("data.test_clips", "data.sampling"), f"data.test_clips must be 1 or 2 with data.sampling segments "
             f"(segment centres, then also segment starts), got {d.test_clips}")
    if m.init_from and m.backbone.pretrained2d:
        fail(("model.init_from", "model.backbone.pretrained2d"), "model.init_from and model.backbone.pretrained2d "
             "both initialise the backbone: set one (init_from loads a whole model's checkpoint)")
    for key in ("crop_size", "test_crop_size"):
        if getattr(d, key) > d.short_side:
            fail((f"data.{key}", "data.short_side"), f"data.{key} ({getattr(d, key)}) is larger than the resized "
                 f"frame (its short side is data.short_side, {d.short_side})")


def _leaves(key: str, value):
    """(name, number) for a value, each element of a list, or of a list of lists: key[i][j]."""
    if not isinstance(value, tuple):
        yield key, value
        return
    for i, v in enumerate(value):
        yield from _leaves(f"{key}[{i}]", v)
