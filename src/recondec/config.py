"""Typed schema for every config group: the one place for every default, its meaning and its range.

Hydra composes YAML files from ``conf/``; each group is validated against the dataclass here. OmegaConf checks
types and enum values at compose time (the error names the key and the allowed values). ``check_schema`` then walks
the typed config: every numeric setting declares its range where it is defined (``ranged``), and a value outside it
is refused with a ``ConfigError`` that names the key as the user wrote it; each group's ``check`` adds the rules
across its keys. All of it runs before any work starts.
"""
from __future__ import annotations

import contextlib
import enum
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and what is allowed."""


@contextlib.contextmanager
def refusing_bad_values(multirun: bool = False) -> Iterator[None]:
    """A ConfigError ends the process with its one-line message and exit status 2, no traceback
    (HYDRA_FULL_ERROR=1 shows it). In a multirun it is re-raised: Hydra records that job as failed and runs the
    others."""
    try:
        yield
    except ConfigError as e:
        if multirun or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: allowed {allowed}")


@dataclass(frozen=True)
class Range:
    """The values a numeric setting (or each element of a numeric list or dict) allows: from `low` to `high`, either
    end open or absent; `null` says what null means where null is allowed."""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    null: Optional[str] = None
    integer: bool = False

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.null is not None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = f"{kind} {' and '.join(parts)}" if parts else kind
        return f"{text}, or null ({self.null})" if self.null is not None else text


def ranged(default: Any = MISSING, *, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, high_open: bool = False, null: Optional[str] = None, factory=None,
           integer: bool = False) -> Any:
    """A dataclass field with its range (integer fields: ``integer=True``, said in the messages)."""
    meta = {"range": Range(low, high, low_open, high_open, null, integer)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def count(default: Any = MISSING, low: int = 0, null: Optional[str] = None, **kw) -> Any:
    """An integer setting >= `low` (0 unless given)."""
    return ranged(default, low=low, null=null, integer=True, **kw)


def positive(default: Any = MISSING, null: Optional[str] = None, **kw) -> Any:
    """A number > 0 (learning rates, multipliers, seconds)."""
    return ranged(default, low=0, low_open=True, null=null, **kw)


def weight(default: Any = MISSING, null: Optional[str] = None, **kw) -> Any:
    """A number >= 0 (loss weights, decay)."""
    return ranged(default, low=0, null=null, **kw)


class Checked:
    """A config group: its fields' ranges are checked by ``check_schema``, then its own ``check`` (the rules across
    its keys), given the group's key (``schedule.joint``) so that messages name what the user wrote."""

    def check(self, at: str) -> None:
        pass


class Study(str, enum.Enum):
    train = "train"  # one training job (the default)
    eval = "eval"    # reload resume=<checkpoint> and evaluate it
    recon = "recon"  # the reconstruction study: a frozen classifier, SAE and SWWAE decoders from each level


class Topology(str, enum.Enum):
    none = "none"          # the baseline: no decoder
    stacked = "stacked"    # one decoder from the top (SAE / SWWAE first & all)
    layerwise = "layerwise"  # one single-block decoder per macro-layer, fed by the clean encoder


class Unpool(str, enum.Enum):
    fixed = "fixed"
    switch = "switch"


class LossLevels(str, enum.Enum):
    first = "first"  # the image only
    all = "all"      # the image and every intermediate level below the top


class LossForm(str, enum.Enum):
    reference = "reference"  # sum of squares / (2 * batch), as the Caffe EuclideanLoss
    mean = "mean"            # mean squared error over all elements


class TrainCrop(str, enum.Enum):
    random_resized = "random_resized"  # RandomResizedCrop (8-100 % of the area, aspect 3/4-4/3) + flip: today's default
    resize_crop = "resize_crop"        # paper era: shorter side to 256/224 x size, a random size x size crop + flip
    pad_crop = "pad_crop"              # small images: zero padding, a random crop of the original size + flip
    none = "none"                      # no augmentation


CROP_PADDING = 2  # pad_crop's default: pixels of zero padding on each side (the few-label pilots' setting)

# the training augmentations each loader implements; the first is its default (schedule.train_crop=null)
TRAIN_CROPS = {"memory": (TrainCrop.none, TrainCrop.pad_crop),
               "ffcv": (TrainCrop.random_resized, TrainCrop.resize_crop),
               "torchvision": (TrainCrop.random_resized, TrainCrop.resize_crop)}


class Optimizer(str, enum.Enum):
    sgd = "sgd"
    adamw = "adamw"


class LRSchedule(str, enum.Enum):
    constant = "constant"
    step = "step"
    cosine = "cosine"


class ChannelOrder(str, enum.Enum):
    rgb = "rgb"  # torchvision's weights
    bgr = "bgr"  # Caffe-converted weights (input=caffe)


class Precision(enum.StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast; what GPUs from Ampere on (and recent CPUs) run fastest
    fp16 = "fp16"  # autocast with a gradient scaler


class NonFinite(enum.StrEnum):
    stop = "stop"  # an error naming the term and step; the last good checkpoint is kept
    skip = "skip"  # the batch's update is skipped and counted


class DeadDecoder(enum.StrEnum):
    error = "error"  # a decoder whose loss-carrying output does not depend on the input stops the run
    warn = "warn"    # logged, and the run goes on


class Downsample(str, enum.Enum):
    stride = "stride"  # stride-2 convolutions, as published (torchvision's weights)
    pool = "pool"      # each stride-2 conv at stride 1, then a 2x2 max-pool: switches at every stage (from scratch)


class DecoderInit(str, enum.Enum):
    reference = "reference"  # the reference prototxts: N(0, 0.001^2) (fc decoders 0.01), biases 0
    he = "he"                # He (Kaiming) normal for the ReLUs that follow, biases 0: torchvision's convention


class Loader(str, enum.Enum):
    memory = "memory"          # whole data set as tensors (built-in sets): fast and bit-deterministic
    ffcv = "ffcv"              # .beton files through ffcv
    torchvision = "torchvision"  # ImageFolder + DataLoader, the fallback


class BadImages(enum.StrEnum):
    refuse = "refuse"  # the job stops before it starts, naming the files that do not decode
    skip = "skip"      # the job trains without them; the run lists them (bad_images.tsv)


class Order(str, enum.Enum):
    random = "random"
    quasi_random = "quasi_random"
    sequential = "sequential"


class WriteMode(str, enum.Enum):
    raw = "raw"
    jpg = "jpg"
    proportion = "proportion"
    smart = "smart"


@dataclass
class BackboneConf(Checked):
    name: str = MISSING                 # a key of recondec.models.backbones.BACKBONES
    width: float = positive(1.0)        # channel multiplier (vgg16_small)
    image_size: int = count(224, low=1)  # the backbone's own rule (a multiple of 32, ...): checks.py
    dropout: float = ranged(0.5, low=0, high=1, high_open=True)
    classifier_width: int = count(4096, low=1)  # fc6 / fc7 units
    # batch norm after every encoder conv (never in the decoders, as in the paper). null: the backbone's own
    # (vgg16_bn has it, the others do not); true / false only where the backbone lets you choose (vgg16_small)
    batch_norm: Optional[bool] = None
    # how a ResNet halves the size (null: stride, its published form); `pool` gives SWWAE switches at every stage
    downsample: Optional[Downsample] = None
    # a local torchvision-format state dict, or torchvision's weights name for it (IMAGENET1K_V1, DEFAULT)
    pretrained: Optional[str] = None
    channel_order: ChannelOrder = ChannelOrder.rgb  # what the weights expect; the data stays RGB
    # the decoders' initialisation. `reference` trains under SGD only after long layer-wise warm starts (the upper
    # blocks sit on a plateau for hundreds of steps: docs/recipe.md); vgg16_small uses `he`
    decoder_init: DecoderInit = DecoderInit.reference


@dataclass
class VariantConf(Checked):
    name: str = MISSING
    topology: Topology = Topology.none
    unpool: Unpool = Unpool.fixed
    losses: LossLevels = LossLevels.first
    # where the stacked decoder starts: None = the top macro-layer (pool5); a lower level ("pool3") or
    # "fc6" / "fc7" / "fc8" for the reconstruction study
    decode_from: Optional[str] = None

    def check(self, at: str) -> None:
        if self.topology is Topology.layerwise:
            _require(self.losses is LossLevels.all and self.decode_from is None, f"{at}.losses",
                     "'all' with decode_from=null for a layer-wise decoder", self.losses.value)


@dataclass
class LossConf(Checked):
    form: LossForm = LossForm.reference
    detach_targets: bool = False        # the reference code lets the loss flow into the target activation
    classification: float = weight(1.0)
    # weight per level, in the chosen form; levels a variant does not use are ignored
    weights: dict[str, float] = weight(factory=dict)
    default_weight: Optional[float] = weight(None, null="feature levels without a weight are an error")
    # multiplies every reconstruction weight above: one knob for a dose-response sweep (loss.scale=0.1,1,10,100).
    # null: the variant's entry in scale_per_variant, else 1 (filled in by the checks, so a run records its scale)
    scale: Optional[float] = weight(None, null="scale_per_variant's entry for the variant, else 1")
    # a grid's arms, each variant at the scale its dose-response curve chose: variant name -> scale
    scale_per_variant: dict[str, float] = weight(factory=dict)


@dataclass
class StageConf(Checked):
    epochs: int = count(0)
    lr: float = positive(0.01)
    freeze_encoder: bool = False
    # true: the LR is chosen when the stage starts, by the supplement's rule for decoder LRs (an LR range test
    # over schedule.pretrain.lr_candidates, largest loss drop); for a stage with the encoder frozen
    probe_lr: bool = False

    def check(self, at: str) -> None:
        _require(not self.probe_lr or self.freeze_encoder, f"{at}.probe_lr",
                 "true only for a stage with freeze_encoder=true (it probes the decoder)", self.probe_lr)


@dataclass
class PretrainConf(Checked):
    """Layer-wise decoder pre-training, the reference's warm start for the stacked decoders: every decoder block
    reconstructs the level below from the frozen encoder's clean activation (and switches), loss weight 1 in the
    reference (sum) form, one LR per block; the stacked decoder then starts from those blocks."""
    epochs: int = count(0)              # 0: off
    # LR per block, keyed by the level the block decodes from (its macro-layer's output: pool1 .. pool5), for the
    # sum-form loss. A block without an entry gets the supplement's rule: an LR range test (below).
    lrs: dict[str, float] = positive(factory=dict)
    lr_candidates: list[float] = positive(factory=lambda: [10.0 ** -k for k in range(0, 13)])
    probe_steps: int = count(20, low=2)  # per candidate; the LR with the largest loss drop wins
    probe_batches: int = count(4, low=1)  # training batches the probe cycles through (their features are cached)

    freeze_encoder = True  # not a config key: pre-training never touches the encoder

    def check(self, at: str) -> None:
        _require(bool(self.lr_candidates), f"{at}.lr_candidates", "a non-empty list of learning rates > 0",
                 self.lr_candidates)


@dataclass
class ScheduleConf(Checked):
    optimizer: Optimizer = Optimizer.sgd
    momentum: float = ranged(0.9, low=0, high=1, high_open=True)
    weight_decay: float = weight(5e-4)
    batch_size: int = count(64, low=1)
    lr_schedule: LRSchedule = LRSchedule.cosine
    warmup_epochs: float = weight(0.0)
    step_epochs: list[int] = count(factory=list)  # for lr_schedule=step: epochs at which lr *= step_gamma
    step_gamma: float = positive(0.1)
    # training augmentation, for every loader in one place (TRAIN_CROPS says which loader takes which).
    # null: the loader's default (memory: none; ffcv and torchvision: random_resized), filled in by the checks
    train_crop: Optional[TrainCrop] = None
    crop_padding: int = count(CROP_PADDING, low=1)  # pad_crop: zero padding on each side before the random crop
    bias_lr_mult: float = positive(1.0)  # Caffe's lr_mult for biases (2 in the reference VGG recipe)
    bias_decay_mult: float = weight(1.0)  # Caffe's decay_mult for biases (0 in the reference VGG recipe)
    # semi-supervised (data.labels_per_class): each step also draws this many unlabelled images, which enter the
    # reconstruction terms only (every stage with a decoder; the baseline ignores them). 0: off
    unlabelled_batch_size: int = count(0)
    # stage 0: decoder blocks one by one on clean activations (the warm start; 0 epochs = off);
    # stage 1: decoders only (encoder frozen); stage 2: everything jointly
    pretrain: PretrainConf = field(default_factory=PretrainConf)
    decoder: StageConf = field(default_factory=lambda: StageConf(epochs=0, lr=0.01, freeze_encoder=True))
    joint: StageConf = field(default_factory=lambda: StageConf(epochs=1, lr=0.01, freeze_encoder=False))

    def check(self, at: str) -> None:
        _require(self.pretrain.epochs + self.decoder.epochs + self.joint.epochs > 0, f"{at}.joint.epochs",
                 "at least one epoch over all stages", self.joint.epochs)


@dataclass
class FFCVConf(Checked):
    """ffcv reading and .beton writing options (used when data.loader=ffcv and by src/prepare.py)."""
    # where .beton files live; default <repo>/data/beton/<data.name> (set it when you have several folder sets)
    beton_dir: Optional[str] = None
    os_cache: bool = False              # True: the whole file in the page cache (small sets, or RAM to spare)
    order: Order = Order.quasi_random   # random | quasi_random | sequential
    distributed: bool = False
    batch_timeout_s: float = positive(120.0)  # no batch within this time -> a clear error, never a hang
    max_resolution: int = count(256, low=1)
    write_mode: WriteMode = WriteMode.smart  # raw | jpg | proportion | smart (raw up to ~96x96 px, JPEG above)
    jpeg_quality: int = count(90, low=1, high=100)
    compress_probability: float = ranged(0.5, low=0, high=1)
    num_workers: int = count(16, low=1)  # writer processes
    strict: bool = False                # stop at the first bad image instead of skipping it


@dataclass(frozen=True)
class DatasetKind:
    """What checks and loaders need to know of a data set: asked of this description, never of its name."""
    builtin: bool = False               # read by data/builtin.py (memory loader, or a .beton written on first use)
    classes_from_folders: bool = False  # data.num_classes=null: the class folders of <data.root>/train


DATASETS = {"digits": DatasetKind(builtin=True), "fashion_mnist": DatasetKind(builtin=True),
            "imagenet": DatasetKind(), "folder": DatasetKind(classes_from_folders=True)}


def dataset_kind(name: str) -> DatasetKind:
    """A name not listed (a data config of your own) is an ImageFolder tree at data.root."""
    return DATASETS.get(name, DatasetKind())


@dataclass
class DataConf(Checked):
    name: str = MISSING                 # digits | fashion_mnist | imagenet | folder
    loader: Loader = Loader.memory
    root: Optional[str] = None          # data on disk (ImageFolder root with train/ and val/, or the idx files)
    num_classes: Optional[int] = count(MISSING, low=1, null="data=folder: the class folders of <root>/train")
    # 0-1 scale, RGB. null: the pretrained weights' own (torchvision's weights metadata), else ImageNet's
    mean: Optional[list[float]] = ranged(None, low=0, high=1, null="the weights' own, else ImageNet's")
    std: Optional[list[float]] = positive(None, null="the weights' own, else ImageNet's")
    # built-in sets: training images held out as the validation set (stratified, the same for every run), which
    # selects (best.pt, LR probes, weights, epochs); the official test set is read once, at the end of a run.
    # Image folders: null (their val/ folder validates, an optional test/ folder is the test set)
    val_size: Optional[int] = count(None, low=1, null="image folders: their val/ folder")
    # use only the first N of the remaining training images (quick runs)
    train_limit: Optional[int] = count(None, low=1, null="all")
    # K labelled images per class (stratified, drawn with split_seed); the rest of the training pool is unlabelled
    # (schedule.unlabelled_batch_size > 0) or unused. null: every training image is labelled
    labels_per_class: Optional[int] = count(None, low=1, null="every training image is labelled")
    # which images are labelled; null: trainer.seed (one subset per seed)
    split_seed: Optional[int] = count(None, null="trainer.seed")
    val_limit: Optional[int] = count(None, low=1, null="all")   # validate on the first N validation images only
    test_limit: Optional[int] = count(None, low=1, null="all")  # test on the first N test images only
    # digits (no official split): the share of its images that is the test set
    test_fraction: float = ranged(0.2, low=0, high=1, low_open=True, high_open=True)
    num_workers: int = count(2)         # loader workers
    # data.loader=torchvision: every image of the folders read is decoded once before the job (cached per folder),
    # so that a broken file cannot kill a loader worker mid-run. ffcv: the .beton writer always skips and reports them
    bad_images: BadImages = BadImages.refuse
    ffcv: FFCVConf = field(default_factory=FFCVConf)

    def check(self, at: str) -> None:
        import os

        for key, value in (("mean", self.mean), ("std", self.std)):
            _require(value is None or len(value) == 3, f"{at}.{key}", "null or three values (RGB)", value)
        kind = dataset_kind(self.name)
        if kind.builtin:
            _require(self.loader is not Loader.torchvision, f"{at}.loader", "memory or ffcv (the torchvision loader "
                     f"reads image folders; data={self.name} is built in)", self.loader.value)
            _require(self.val_size is not None, f"{at}.val_size",
                     f"an integer >= 1 (data={self.name} holds validation images out of its training split)",
                     self.val_size)
        else:
            _require(self.loader is not Loader.memory, f"{at}.loader",
                     f"ffcv or torchvision (data={self.name} is an image folder)", self.loader.value)
            _require(self.root is not None and os.path.isdir(str(self.root)), f"{at}.root",
                     "an existing directory (set data.root=/path/to/data)", self.root)
            _require(self.val_size is None, f"{at}.val_size",
                     f"null (data={self.name} is an image folder: its val/ folder is the validation set)",
                     self.val_size)


@dataclass
class TrainerConf(Checked):
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    precision: Precision = Precision.fp32
    channels_last: bool = False
    compile: bool = False               # torch.compile the step (forward and loss terms as one graph); trainer=gpu: on
    deterministic: bool = False         # True: bit-reproducible CPU runs (slower)
    seed: int = count(0)
    log_every_n_steps: int = count(20, low=1)
    val_every_n_epochs: int = count(1, low=1)
    recon_images: int = count(8, low=1)  # images in each reconstruction grid
    # reconstruction grids and val SSIM (costly) during training; always at the end
    figures_every_n_epochs: int = count(5, low=1)
    max_steps_per_epoch: Optional[int] = count(None, low=1, null="whole epochs")  # cut epochs short (smoke tests)
    progress: bool = True
    # also checkpoint within epochs (long epochs, preemption)
    checkpoint_every_n_steps: Optional[int] = count(None, low=1, null="at the end of every epoch only")
    nonfinite: NonFinite = NonFinite.stop  # what a NaN/inf loss does
    devices: int = count(1, low=1)      # >1: spawn that many DDP processes inside the job (gloo on CPU, NCCL on GPU)
    # also evaluate the final model on 10 crops (corners, centre, mirrored) of the 256/224 view: the paper's second
    # protocol
    ten_crop: bool = False
    test: bool = True                   # evaluate the final model on the test set, once, at the end of the run
    # the objective's diagnostics at every validation (grad_share/*, encoder/rel_change) use this many fixed
    # validation batches; the live-decoder guard uses the first
    diagnostic_batches: int = count(2, low=1)
    dead_decoder: DeadDecoder = DeadDecoder.error
    # a loss-carrying reconstruction whose spread over a batch is below this share of its target's is dead
    dead_decoder_threshold: float = ranged(1e-6, low=0, high=1, high_open=True)

    def check(self, at: str) -> None:
        # a string, not an enum: cuda:N names one of N devices
        _require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, f"{at}.device",
                 "auto, cpu, cuda or cuda:N", self.device)


@dataclass
class LoggerConf(Checked):
    tracking_uri: str = MISSING         # absolute sqlite path at the repo root by default
    experiment: str = "default"
    run_name: Optional[str] = None      # default: the job's overrides, e.g. "variant=swwae_all,seed=1"
    sweep_tag: Optional[str] = None     # default: the multirun's output folder
    log_checkpoint: bool = True         # the final model as the run's MLflow model "model" (the checkpoint stays local)
    system_metrics: bool = False        # MLflow's system metrics (CPU, memory, disk, network; GPU with pynvml)
    # logging runs beside training (a store that goes away delays it, not the job); at the end the job waits this
    # long for it, then keeps what is left in <output_dir>/unlogged.jsonl for resume=auto to re-log
    flush_timeout_s: float = positive(30.0)
    tags: dict[str, str] = field(default_factory=dict)  # extra run tags (the cached classifier's run: role=classifier)


@dataclass
class ClassifierConf(Checked):
    """The classifier a job starts from, as in the paper's protocol (fine-tune a pretrained classifier): trained
    once per (backbone, data, classifier settings), cached under a key derived from them, its own MLflow run, and
    reused by every job and every later grid with the same settings. epochs=0: off (backbone.pretrained or the
    initialisation is the start)."""
    epochs: int = count(0)
    # null: trainer.seed (one classifier per seed, so a verdict is over classifiers); a number: one classifier shared
    # by every seed of a grid
    seed: Optional[int] = count(None, null="trainer.seed")
    schedule: Optional[ScheduleConf] = None  # how it is trained; None: the job's own schedule (its joint stage)
    cache_dir: str = "${repo_root:}/multirun/classifiers"  # <cache_dir>/<key>/: encoder.pt, the run's outputs


@dataclass
class ReconStudyConf(Checked):
    """The reconstruction study (study=recon): decoders trained on a frozen classifier, one per level. The
    classifier is backbone.pretrained, or trained once and cached (classifier.epochs)."""
    decoder_epochs: int = count(3, low=1)
    # null: every level of the backbone (VGG: pool1 .. pool5, fc6 .. fc8; ResNet: stem, layer1 .. layer4, avgpool, fc)
    levels: Optional[list[str]] = None
    figure_images: int = count(4, low=1)

    def check(self, at: str) -> None:
        _require(self.levels is None or bool(self.levels), f"{at}.levels", "null or a non-empty list of levels",
                 self.levels)


@dataclass
class ReportConf(Checked):
    """What the report of this experiment will compare, written in the preset before its grid runs (a
    pre-registration), and recorded with every run (tag ``preregistered``). Each entry is one question: a Holm family
    of comparisons, each "<row>" (against the baseline) or "<row> vs <reference row>". Rows no family names are
    exploratory: reported in a table of their own, corrected among themselves."""
    preregistered: dict[str, list[str]] = field(default_factory=dict)
    # the baseline's top-1 (%) that a competent recipe reaches here (published numbers): printed beside the baseline
    baseline_target: Optional[float] = ranged(None, low=0, high=100, null="none stated")
    # points of top-1 too small to matter here: the TOST margin of every comparison (tag ``equivalence_margin``)
    # and the MDE `src/report.py --plan` sizes a grid for
    equivalence_margin: float = ranged(1.0, low=0, high=100, low_open=True)

    def check(self, at: str) -> None:
        for family, rows in self.preregistered.items():
            _require(bool(rows) and all(re.fullmatch(r"[\w+.@-]+( vs [\w+.@-]+)?", r) for r in rows),
                     f"{at}.preregistered.{family}", 'a non-empty list of "<row>" or "<row> vs <reference row>"',
                     rows)


@dataclass
class Config:
    backbone: BackboneConf = field(default_factory=BackboneConf)
    variant: VariantConf = field(default_factory=VariantConf)
    loss: LossConf = field(default_factory=LossConf)
    schedule: ScheduleConf = field(default_factory=ScheduleConf)
    data: DataConf = field(default_factory=DataConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    logger: LoggerConf = field(default_factory=LoggerConf)
    resume: Optional[str] = None        # a checkpoint path, or "auto": the newest valid one of this output dir
    output_dir: str = "."
    study: Study = Study.train
    recon: ReconStudyConf = field(default_factory=ReconStudyConf)
    classifier: ClassifierConf = field(default_factory=ClassifierConf)
    report: ReportConf = field(default_factory=ReportConf)
    # keys the checks filled in because they were null (the loader's augmentation, the variant's loss scale, the
    # normalisation, an image folder's classes): a derived sub-job (checks.derive) works them out again
    filled: list[str] = field(default_factory=list)


REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"


def variant_names() -> list[str]:
    """The variants of conf/variant/ in the paper's order (baseline; SAE then SWWAE, each first / all / layerwise);
    aliases (an option that is only a defaults list, e.g. `swwae`) are left out. The one list that grids, the
    benchmark, the report and the tests use."""
    def order(path: Path) -> tuple:
        v = OmegaConf.merge(OmegaConf.structured(VariantConf), OmegaConf.load(path))
        return (v.topology is not Topology.none, v.unpool is Unpool.switch, v.topology is Topology.layerwise,
                v.losses is LossLevels.all)

    options = [p for p in (CONF_DIR / "variant").glob("*.yaml") if "defaults" not in OmegaConf.load(p)]
    return [p.stem for p in sorted(options, key=order)]


def variant_option(name: str) -> dict:
    """conf/variant/<name>.yaml as the schema types it: the one description of a variant, which sub-jobs (the cached
    classifier, the reconstruction study) compose instead of restating it."""
    v = OmegaConf.merge(OmegaConf.structured(VariantConf), OmegaConf.load(CONF_DIR / "variant" / f"{name}.yaml"))
    return OmegaConf.to_container(v, enum_to_str=True)


def register_schema() -> None:
    """Register the schema (conf/config.yaml names it in its defaults list) and the ${repo_root:} resolver."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=Config)
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


def numeric_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """{name: (field, the number type)} of a dataclass's int / float fields, Optional or not, and of its lists and
    dicts of numbers (bools are not numbers here)."""
    hints = typing.get_type_hints(cls)
    found = {}
    for f in fields(cls):
        t = hints[f.name]
        if typing.get_origin(t) is typing.Union:
            t = next(a for a in typing.get_args(t) if a is not type(None))
        if typing.get_origin(t) in (list, dict):
            t = typing.get_args(t)[-1]
        if t in (int, float):
            found[f.name] = (f, t)
    return found


def _check_ranges(node: Any, at: str) -> None:
    for name, (f, _) in numeric_fields(type(node)).items():
        rng: Range = f.metadata["range"]
        value, key = getattr(node, name), f"{at}.{name}" if at else name
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
        if items is None:
            _require(rng.admits(value), key, rng.describe(), value)
            continue
        for k, v in items:
            per_key = isinstance(value, dict)
            _require(v is not None and rng.admits(v), f"{key}.{k}" if per_key else key,
                     f"{rng.describe().split(', or null')[0]} for each element", v if per_key else value)


def _walk(node: Any, at: str = "") -> None:
    """Every group's ranges, then its own check, depth first: the messages name each key by its full path."""
    if isinstance(node, Checked):
        _check_ranges(node, at)
    for f in fields(node):
        child = getattr(node, f.name)
        if is_dataclass(child):
            _walk(child, f"{at}.{f.name}" if at else f.name)
    if isinstance(node, Checked):
        node.check(at)


def check_schema(composed: DictConfig) -> Config:
    """Every range of the schema and every group's rules, then the rules across groups; returns the typed config
    object. checks.validate adds what needs the layers above (the registry, files, weights, the data's labels)."""
    cfg = OmegaConf.to_object(composed)
    _walk(cfg)
    _require(cfg.study != Study.recon or cfg.classifier.epochs or cfg.backbone.pretrained, "classifier.epochs",
             "> 0 for study=recon without backbone.pretrained (the study needs a trained classifier)",
             cfg.classifier.epochs)
    if cfg.schedule.unlabelled_batch_size:
        _require(cfg.data.labels_per_class is not None, "schedule.unlabelled_batch_size",
                 "0 unless data.labels_per_class leaves unlabelled images (set data.labels_per_class=K)",
                 cfg.schedule.unlabelled_batch_size)
        _require(cfg.schedule.unlabelled_batch_size % cfg.trainer.devices == 0, "schedule.unlabelled_batch_size",
                 f"a multiple of trainer.devices={cfg.trainer.devices} (it is the global batch)",
                 cfg.schedule.unlabelled_batch_size)
    unknown = sorted(set(cfg.loss.scale_per_variant) - set(variant_names())) if cfg.loss.scale_per_variant else []
    _require(not unknown, "loss.scale_per_variant", f"variant names as keys (of {variant_names()})", unknown)
    if cfg.loss.scale is None:  # an explicit loss.scale (a dose-response sweep) wins over the grid's table
        cfg.loss.scale = cfg.loss.scale_per_variant.get(cfg.variant.name, 1.0)
        cfg.filled.append("loss.scale")
    for schedule, at in ((cfg.schedule, "schedule"), (cfg.classifier.schedule, "classifier.schedule")):
        if schedule is not None and schedule.train_crop is None:
            cfg.filled.append(f"{at}.train_crop")
        if schedule is not None:
            schedule.train_crop = _train_crop(schedule.train_crop, cfg.data.loader, f"{at}.train_crop")
    _require(cfg.study != Study.eval or cfg.resume is not None, "resume", "a checkpoint (or auto) for study=eval: "
             "the model it evaluates", cfg.resume)
    per_rank, rest = divmod(cfg.schedule.batch_size, cfg.trainer.devices)
    _require(rest == 0 and per_rank > 0, "schedule.batch_size",
             f"a multiple of trainer.devices={cfg.trainer.devices} (it is the global batch)", cfg.schedule.batch_size)
    return cfg


def _train_crop(crop: Optional[TrainCrop], loader: Loader, key: str) -> TrainCrop:
    """The augmentation a loader runs: the one asked for if that loader implements it, its default if none is."""
    allowed = TRAIN_CROPS[loader.value]
    _require(crop is None or crop in allowed, key,
             f"{' or '.join(c.value for c in allowed)} with data.loader={loader.value}, or null (its default)",
             getattr(crop, "value", crop))
    return allowed[0] if crop is None else crop


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
