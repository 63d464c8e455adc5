"""Typed schema for every config group.

Hydra composes YAML files from ``conf/``; each group is validated against the dataclass here:
OmegaConf checks types and enum values at compose time (the error names the key and the allowed
values), and ``validate(cfg)`` runs the ``__post_init__`` range checks of every dataclass before any
work starts. One place, declarative, instead of checks scattered through the code.
"""
from __future__ import annotations

import enum
import re
from pathlib import Path
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and what is allowed."""


class Checked:
    """Dataclasses whose ``check()`` runs once every value is filled in (defaults may still be MISSING
    while Hydra builds the schema)."""

    def __post_init__(self) -> None:
        if not any(getattr(self, f.name) is MISSING or getattr(self, f.name) == MISSING for f in fields(self)):
            self.check()

    def check(self) -> None:
        pass


def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: allowed {allowed}")


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


class DecoderInit(str, enum.Enum):
    reference = "reference"  # the reference prototxts: N(0, 0.001^2) (fc decoders 0.01), biases 0
    he = "he"                # He (Kaiming) normal for the ReLUs that follow, biases 0: torchvision's convention


class Loader(str, enum.Enum):
    memory = "memory"          # whole data set as tensors (built-in sets): fast and bit-deterministic
    ffcv = "ffcv"              # .beton files through ffcv
    torchvision = "torchvision"  # ImageFolder + DataLoader, the fallback


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
    width: float = 1.0                  # channel multiplier (vgg16_small)
    image_size: int = 224
    dropout: float = 0.5
    classifier_width: int = 4096        # fc6 / fc7 units
    # a local torchvision-format state dict, or torchvision's weights name for it (IMAGENET1K_V1, DEFAULT)
    pretrained: Optional[str] = None
    channel_order: ChannelOrder = ChannelOrder.rgb  # what the weights expect; the data stays RGB
    # the decoders' initialisation. `reference` trains under SGD only after long layer-wise warm starts (the
    # upper blocks sit on a plateau for hundreds of steps, README); the CPU-scale presets use `he`
    decoder_init: DecoderInit = DecoderInit.reference

    def check(self) -> None:  # the name, the size rule and the weights are checked against the registry: checks.py
        _require(self.width > 0, "backbone.width", "a positive multiplier", self.width)
        _require(0 <= self.dropout < 1, "backbone.dropout", "a value in [0, 1)", self.dropout)


@dataclass
class VariantConf(Checked):
    name: str = MISSING
    topology: Topology = Topology.none
    unpool: Unpool = Unpool.fixed
    losses: LossLevels = LossLevels.first
    # where the stacked decoder starts: None = the top macro-layer (pool5); a lower level ("pool3") or
    # "fc6" / "fc7" / "fc8" for the reconstruction study
    decode_from: Optional[str] = None

    def check(self) -> None:
        if self.topology is Topology.layerwise:
            _require(self.losses is LossLevels.all and self.decode_from is None, "variant.losses",
                     "'all' with decode_from=null for a layer-wise decoder", self.losses.value)


@dataclass
class LossConf(Checked):
    form: LossForm = LossForm.reference
    detach_targets: bool = False        # the reference code lets the loss flow into the target activation
    classification: float = 1.0
    # weight per level, in the chosen form; levels a variant does not use are ignored
    weights: dict[str, float] = field(default_factory=dict)
    default_weight: Optional[float] = None  # for feature levels not listed (e.g. AlexNet's conv3 / conv4)

    def check(self) -> None:
        _require(self.classification >= 0, "loss.classification", "a weight >= 0", self.classification)
        for level, w in self.weights.items():
            _require(w >= 0, f"loss.weights.{level}", "a weight >= 0", w)
        _require(self.default_weight is None or self.default_weight >= 0, "loss.default_weight",
                 "a weight >= 0 or null", self.default_weight)


@dataclass
class StageConf(Checked):
    epochs: int = 0
    lr: float = 0.01
    freeze_encoder: bool = False
    # true: the LR is chosen when the stage starts, by the supplement's rule for decoder LRs (an LR range test
    # over schedule.pretrain.lr_candidates, largest loss drop); for a stage with the encoder frozen
    probe_lr: bool = False

    def check(self) -> None:
        _require(self.epochs >= 0, "schedule.<stage>.epochs", "an integer >= 0", self.epochs)
        _require(self.lr > 0, "schedule.<stage>.lr", "a learning rate > 0", self.lr)
        _require(not self.probe_lr or self.freeze_encoder, "schedule.<stage>.probe_lr",
                 "true only for a stage with freeze_encoder=true (it probes the decoder)", self.probe_lr)


@dataclass
class PretrainConf(Checked):
    """Layer-wise decoder pre-training, the reference's warm start for the stacked decoders: every decoder block
    reconstructs the level below from the frozen encoder's clean activation (and switches), loss weight 1 in the
    reference (sum) form, one LR per block; the stacked decoder then starts from those blocks."""
    epochs: int = 0                     # 0: off
    # LR per block, keyed by the level the block decodes from (its macro-layer's output: pool1 .. pool5), for the
    # sum-form loss. A block without an entry gets the supplement's rule: an LR range test (below).
    lrs: dict[str, float] = field(default_factory=dict)
    lr_candidates: list[float] = field(default_factory=lambda: [10.0 ** -k for k in range(0, 13)])
    probe_steps: int = 20               # per candidate; the LR with the largest loss drop wins
    probe_batches: int = 4              # training batches the probe cycles through (their features are cached)

    freeze_encoder = True  # not a config key: pre-training never touches the encoder

    def check(self) -> None:
        _require(self.epochs >= 0, "schedule.pretrain.epochs", "an integer >= 0", self.epochs)
        for level, lr in self.lrs.items():
            _require(lr > 0, f"schedule.pretrain.lrs.{level}", "a learning rate > 0", lr)
        _require(bool(self.lr_candidates) and min(self.lr_candidates) > 0, "schedule.pretrain.lr_candidates",
                 "a non-empty list of learning rates > 0", self.lr_candidates)
        _require(self.probe_steps >= 2 and self.probe_batches >= 1, "schedule.pretrain.probe_steps",
                 "probe_steps >= 2 and probe_batches >= 1", (self.probe_steps, self.probe_batches))


@dataclass
class ScheduleConf(Checked):
    optimizer: Optimizer = Optimizer.sgd
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    lr_schedule: LRSchedule = LRSchedule.cosine
    warmup_epochs: float = 0.0
    step_epochs: list[int] = field(default_factory=list)   # for lr_schedule=step: epochs at which lr *= step_gamma
    step_gamma: float = 0.1
    train_crop: TrainCrop = TrainCrop.random_resized  # training augmentation of the image-folder loaders
    bias_lr_mult: float = 1.0           # Caffe's lr_mult for biases (2 in the reference VGG recipe)
    bias_decay_mult: float = 1.0        # Caffe's decay_mult for biases (0 in the reference VGG recipe)
    # semi-supervised (data.labels_per_class): each step also draws this many unlabelled images, which enter the
    # reconstruction terms only (every stage with a decoder; the baseline ignores them). 0: off
    unlabelled_batch_size: int = 0
    # stage 0: decoder blocks one by one on clean activations (the warm start; 0 epochs = off);
    # stage 1: decoders only (encoder frozen); stage 2: everything jointly
    pretrain: PretrainConf = field(default_factory=PretrainConf)
    decoder: StageConf = field(default_factory=lambda: StageConf(epochs=0, lr=0.01, freeze_encoder=True))
    joint: StageConf = field(default_factory=lambda: StageConf(epochs=1, lr=0.01, freeze_encoder=False))

    def check(self) -> None:
        _require(self.batch_size > 0, "schedule.batch_size", "an integer > 0", self.batch_size)
        _require(self.unlabelled_batch_size >= 0, "schedule.unlabelled_batch_size", "an integer >= 0 (0: off)",
                 self.unlabelled_batch_size)
        _require(self.weight_decay >= 0, "schedule.weight_decay", "a value >= 0", self.weight_decay)
        _require(self.warmup_epochs >= 0, "schedule.warmup_epochs", "a value >= 0", self.warmup_epochs)
        _require(self.pretrain.epochs + self.decoder.epochs + self.joint.epochs > 0, "schedule.joint.epochs",
                 "at least one epoch over all stages", self.joint.epochs)
        _require(self.bias_lr_mult > 0 and self.bias_decay_mult >= 0, "schedule.bias_lr_mult/bias_decay_mult",
                 "lr mult > 0 and decay mult >= 0", (self.bias_lr_mult, self.bias_decay_mult))


@dataclass
class FFCVConf(Checked):
    """ffcv reading and .beton writing options (used when data.loader=ffcv and by src/prepare.py)."""
    # where .beton files live; default <repo>/data/beton/<data.name> (set it when you have several folder sets)
    beton_dir: Optional[str] = None
    os_cache: bool = False              # True: the whole file in the page cache (small sets, or RAM to spare)
    order: Order = Order.quasi_random   # random | quasi_random | sequential
    distributed: bool = False
    batch_timeout_s: float = 120.0      # no batch within this time -> a clear error, never a hang
    max_resolution: int = 256
    write_mode: WriteMode = WriteMode.smart  # raw | jpg | proportion | smart (raw up to ~96x96 px, JPEG above)
    jpeg_quality: int = 90
    compress_probability: float = 0.5
    num_workers: int = 16               # writer processes
    strict: bool = False                # stop at the first bad image instead of skipping it

    def check(self) -> None:
        _require(1 <= self.jpeg_quality <= 100, "data.ffcv.jpeg_quality", "an integer in [1, 100]", self.jpeg_quality)
        _require(0 <= self.compress_probability <= 1, "data.ffcv.compress_probability", "a value in [0, 1]",
                 self.compress_probability)
        _require(self.batch_timeout_s > 0, "data.ffcv.batch_timeout_s", "seconds > 0", self.batch_timeout_s)


@dataclass(frozen=True)
class DatasetKind:
    """What checks and loaders need to know of a data set: asked of this description, never of its name."""
    builtin: bool = False               # read by data/builtin.py (memory loader, or a .beton written on first use);
    #                                     stored in random order, so its first N images are a random N
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
    num_classes: Optional[int] = MISSING  # data=folder: null counts the class folders of <root>/train
    # 0-1 scale, RGB. null: the pretrained weights' own (torchvision's weights metadata), else ImageNet's
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    # built-in sets: training images held out as the validation set (stratified, the same for every run), which
    # selects (best.pt, LR probes, weights, epochs); the official test set is read once, at the end of a run.
    # Image folders: null (their val/ folder validates, an optional test/ folder is the test set)
    val_size: Optional[int] = None
    train_limit: Optional[int] = None   # use only the first N of the remaining training images (quick runs)
    # K labelled images per class (stratified, drawn with split_seed); the rest of the training pool is unlabelled
    # (schedule.unlabelled_batch_size > 0) or unused. null: every training image is labelled
    labels_per_class: Optional[int] = None
    split_seed: Optional[int] = None    # which images are labelled; null: trainer.seed (one subset per seed)
    val_limit: Optional[int] = None     # validate on the first N validation images only
    test_limit: Optional[int] = None    # test on the first N test images only
    test_fraction: float = 0.2          # digits (no official split): the share of its images that is the test set
    num_workers: int = 2                # loader workers
    ffcv: FFCVConf = field(default_factory=FFCVConf)

    def check(self) -> None:
        import os

        _require((self.mean is None or len(self.mean) == 3) and (self.std is None or (len(self.std) == 3 and
                 min(self.std) > 0)), "data.mean/data.std", "null or three values each, std > 0", (self.mean, self.std))
        _require(0 < self.test_fraction < 1, "data.test_fraction", "a value in (0, 1)", self.test_fraction)
        _require(self.labels_per_class is None or self.labels_per_class >= 1, "data.labels_per_class",
                 "null (all labelled) or an integer >= 1", self.labels_per_class)
        kind = dataset_kind(self.name)
        if kind.builtin:
            _require(self.loader is not Loader.torchvision, "data.loader", "memory or ffcv (the torchvision loader "
                     f"reads image folders; data={self.name} is built in)", self.loader.value)
            _require(self.val_size is not None and self.val_size >= 1, "data.val_size",
                     f"an integer >= 1 (data={self.name} holds validation images out of its training split)",
                     self.val_size)
        else:
            _require(self.loader is not Loader.memory, "data.loader",
                     f"ffcv or torchvision (data={self.name} is an image folder)", self.loader.value)
            _require(self.root is not None and os.path.isdir(str(self.root)), "data.root",
                     "an existing directory (set data.root=/path/to/data)", self.root)
            _require(self.val_size is None, "data.val_size",
                     f"null (data={self.name} is an image folder: its val/ folder is the validation set)",
                     self.val_size)


@dataclass
class TrainerConf(Checked):
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    precision: Precision = Precision.fp32
    channels_last: bool = False
    compile: bool = False               # torch.compile the step (forward and loss terms as one graph); trainer=gpu: on
    deterministic: bool = False         # True: bit-reproducible CPU runs (slower)
    seed: int = 0
    log_every_n_steps: int = 20
    val_every_n_epochs: int = 1
    recon_images: int = 8               # images in each reconstruction grid
    figures_every_n_epochs: int = 5     # reconstruction grids and val SSIM (costly) during training; always at the end
    max_steps_per_epoch: Optional[int] = None  # cut epochs short (smoke tests)
    progress: bool = True
    checkpoint_every_n_steps: Optional[int] = None  # also checkpoint within epochs (long epochs, preemption)
    nonfinite: NonFinite = NonFinite.stop  # what a NaN/inf loss does
    devices: int = 1                    # >1: spawn that many DDP processes inside the job (gloo on CPU, NCCL on GPU)
    # also evaluate the final model on 10 crops (corners, centre, mirrored) of the 256/224 view: the paper's second
    # protocol
    ten_crop: bool = False
    test: bool = True                   # evaluate the final model on the test set, once, at the end of the run
    # the objective's diagnostics at every validation (grad_share/*, encoder/rel_change) use this many fixed
    # validation batches; the live-decoder guard uses the first
    diagnostic_batches: int = 2
    dead_decoder: DeadDecoder = DeadDecoder.error
    # a loss-carrying reconstruction whose spread over a batch is below this share of its target's is dead
    dead_decoder_threshold: float = 1e-6

    def check(self) -> None:
        # a string, not an enum: cuda:N names one of N devices
        _require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "trainer.device",
                 "auto, cpu, cuda or cuda:N", self.device)
        _require(self.checkpoint_every_n_steps is None or self.checkpoint_every_n_steps > 0,
                 "trainer.checkpoint_every_n_steps", "an integer > 0 or null", self.checkpoint_every_n_steps)
        _require(self.devices >= 1, "trainer.devices", "an integer >= 1", self.devices)
        _require(self.figures_every_n_epochs >= 1, "trainer.figures_every_n_epochs", "an integer >= 1",
                 self.figures_every_n_epochs)
        _require(self.diagnostic_batches >= 1, "trainer.diagnostic_batches", "an integer >= 1",
                 self.diagnostic_batches)
        _require(0 <= self.dead_decoder_threshold < 1, "trainer.dead_decoder_threshold", "a value in [0, 1)",
                 self.dead_decoder_threshold)


@dataclass
class LoggerConf(Checked):
    tracking_uri: str = MISSING         # absolute sqlite path at the repo root by default
    experiment: str = "default"
    run_name: Optional[str] = None      # default: the job's overrides, e.g. "variant=swwae_all,seed=1"
    sweep_tag: Optional[str] = None     # default: the multirun's output folder
    log_checkpoint: bool = True         # the final model as the run's MLflow model "model" (the checkpoint stays local)
    system_metrics: bool = False        # MLflow's system metrics (CPU, memory, disk, network; GPU with pynvml)
    tags: dict[str, str] = field(default_factory=dict)  # extra run tags (the cached classifier's run: role=classifier)


@dataclass
class ClassifierConf(Checked):
    """The classifier a job starts from, as in the paper's protocol (fine-tune a pretrained classifier): trained
    once per (backbone, data, classifier settings), cached under a key derived from them, its own MLflow run, and
    reused by every job and every later grid with the same settings. epochs=0: off (backbone.pretrained or the
    initialisation is the start)."""
    epochs: int = 0
    # null: trainer.seed (one classifier per seed, so a verdict is over classifiers); a number: one classifier shared
    # by every seed of a grid
    seed: Optional[int] = None
    schedule: Optional[ScheduleConf] = None  # how it is trained; None: the job's own schedule (its joint stage)
    cache_dir: str = "${repo_root:}/multirun/classifiers"  # <cache_dir>/<key>/: encoder.pt, the run's outputs

    def check(self) -> None:
        _require(self.epochs >= 0, "classifier.epochs", "an integer >= 0", self.epochs)


@dataclass
class ReconStudyConf(Checked):
    """The reconstruction study (study=recon): decoders trained on a frozen classifier, one per level. The
    classifier is backbone.pretrained, or trained once and cached (classifier.epochs)."""
    decoder_epochs: int = 3
    levels: list[str] = field(default_factory=lambda: ["pool1", "pool2", "pool3", "pool4", "pool5",
                                                       "fc6", "fc7", "fc8"])
    figure_images: int = 4

    def check(self) -> None:
        _require(self.decoder_epochs > 0, "recon.decoder_epochs", "an integer > 0", self.decoder_epochs)
        _require(bool(self.levels), "recon.levels", "a non-empty list of levels", self.levels)


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


def register_schema() -> None:
    """Register the schema (conf/config.yaml names it in its defaults list) and the ${repo_root:} resolver."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=Config)
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


def check_schema(cfg: DictConfig) -> Config:
    """Run every range check of the schema (the dataclasses' __post_init__) and the checks across groups, and
    return the typed config object. checks.validate adds what needs the layers above (registry, files, weights)."""
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as e:  # OmegaConf wraps errors raised inside __post_init__
        cause = e.__cause__ or e.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise
    _require(obj.study != Study.recon or obj.classifier.epochs or obj.backbone.pretrained, "classifier.epochs",
             "> 0 for study=recon without backbone.pretrained (the study needs a trained classifier)",
             obj.classifier.epochs)
    if obj.schedule.unlabelled_batch_size:
        _require(obj.data.labels_per_class is not None, "schedule.unlabelled_batch_size",
                 "0 unless data.labels_per_class leaves unlabelled images (set data.labels_per_class=K)",
                 obj.schedule.unlabelled_batch_size)
        _require(obj.schedule.unlabelled_batch_size % obj.trainer.devices == 0, "schedule.unlabelled_batch_size",
                 f"a multiple of trainer.devices={obj.trainer.devices} (it is the global batch)",
                 obj.schedule.unlabelled_batch_size)
    per_rank, rest = divmod(obj.schedule.batch_size, obj.trainer.devices)
    _require(rest == 0 and per_rank > 0, "schedule.batch_size",
             f"a multiple of trainer.devices={obj.trainer.devices} (it is the global batch)", obj.schedule.batch_size)
    return obj


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
