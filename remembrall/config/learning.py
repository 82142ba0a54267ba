"""Config sections of the learning loop: ``select``, ``label``, ``buffer``, ``retrain``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from remembrall.config.base import setting


@dataclass
class SelectConfig:
    """Which samples are worth a label (DESIGN §5 embedding-guided sampling)."""

    sampler: Literal["embedding", "uniform"] = "embedding"
    #: Fraction of the stream to keep (both samplers); the embedding sampler keeps up to this many
    #: of the deduplicated candidates per window, ranked by entropy.
    rate: float = setting(0.1, min=0.0, max=1.0)
    window: int = setting(20, min=1, max=100000, help="entropy-ranking window (candidates)")
    memory: int = setting(512, min=1, max=1000000, help="recently taken embeddings in the FAISS index")
    k: int = setting(4, min=1, max=64, help="nearest taken neighbours that damp a candidate")
    quantile: float = setting(0.5, min=0.01, max=0.99, help="quantile of NN distances that is 'near'")
    ewma: float = setting(0.05, min=0.0001, max=1.0, help="step of the adaptive threshold")
    min_distance: float = setting(0.02, min=0.0, max=2.0, help="cosine distance that is never 'new'")
    bank_windows: float = setting(4.0, min=0.0, help="unspent label budget kept, in windows")
    uniform_mode: Literal["every", "random"] = "every"
    seed: int = 0


@dataclass
class LabelConfig:
    """Where labels come from and which class names are acceptable."""

    #: remote = a label server (``remembrall serve``) on another host labels for this pipeline.
    labeler: Literal["oracle", "teacher", "external", "remote"] = "oracle"
    #: Accepted class names; empty = open vocabulary (new classes grow the head).
    classes: list[str] = field(default_factory=list)
    #: auto = EfficientNet-Lite2 when its weights package is installed, else Lite0 at 320 px.
    teacher_model: Literal["auto", "efficientnet-lite0", "efficientnet-lite2"] = "auto"
    teacher_image_size: int = setting(0, min=0, max=1024, help="0 = the model's default (Lite0 320, Lite2 260)")
    teacher_tta: bool = True
    #: auto = cuda when present (a label server's GPU), else cpu
    teacher_device: str = setting("cpu", help="cpu, cuda, cuda:N or auto")
    teacher_min_confidence: float = setting(0.3, min=0.0, max=1.0)
    #: Optional user-class -> list of ImageNet class names; empty = user classes are ImageNet names.
    teacher_class_map: dict[str, list[str]] = field(default_factory=dict)
    external_dir: str = "external"
    pending: int = setting(10000, min=1, help="samples awaiting an external label")
    #: The label server of ``labeler: remote`` (``remembrall serve``): tcp://HOST:PORT or ipc://PATH;
    #: keys and name in the ``remote`` section.
    remote: str = ""
    remote_pending: int = setting(256, min=1, max=100000,
                                  help="samples (with pixels) kept for the server; beyond, the oldest expire")


@dataclass
class BufferConfig:
    """The replay memory (DESIGN §5 buffer)."""

    capacity: int = setting(2000, min=1, max=10_000_000)
    policy: Literal["reservoir", "class_balanced"] = "class_balanced"
    holdout_every: int = setting(5, min=2, help="every k-th labelled sample goes to the held-out slice")
    #: Newest held-out samples kept: validation should describe the scene as it is now (a long
    #: holdout rejects heads that adapted to a new scene; 30–60 did best on the drift benchmark).
    holdout_capacity: int = setting(50, min=1)
    path: str = "buffer/replay.npz"
    persist_every: int = setting(16, min=1, help="inserts between atomic saves")
    persist_interval_s: float = setting(2.0, min=0.0)
    on_corrupt: Literal["error", "rebuild"] = "rebuild"
    seed: int = 0


@dataclass
class RemoteConfig:
    """How this pipeline reaches a ``remembrall serve`` server (``label.remote``, ``retrain.remote``):
    CURVE keys for ``tcp://`` (nothing crosses a network in clear) and its name there."""

    server_key: str = setting("", help="the server's public key file (NAME.key)")
    client_key: str = setting("", help="this pipeline's key pair file (NAME.key_secret)")
    name: str = setting("", help="this pipeline's name at the server (default: HOST-OUTDIR)")
    timeout_s: float = setting(30.0, min=1.0, max=3600.0, help="a request unacknowledged this long is sent again")


@dataclass
class RetrainConfig:
    """Few-shot retraining under a compute share, early stopping, hot-swap, base update."""

    #: Train on a ``remembrall serve`` server (its GPU) instead of here: tcp://HOST:PORT or ipc://PATH.
    #: This stage still decides when, validates, keeps and announces; only the steps move.
    remote: str = ""
    remote_fallback_s: float = setting(60.0, min=0.0, max=86400.0,
                                       help="server unreachable this long: train here instead (0 = wait for it)")

    min_labels: int = setting(16, min=1, help="labelled samples before the first run")
    every_labels: int = setting(32, min=1, help="new labels that trigger a run (cadence)")
    drift_trigger: float = setting(0.15, min=0.0, max=2.0, help="scene drift (cosine) that triggers a run")
    min_holdout: int = setting(10, min=1, help="held-out samples needed before a head can be validated")
    lr: float = setting(0.003, min=0.0)
    weight_decay: float = setting(1e-4, min=0.0)
    batch_size: int = setting(64, min=1)
    steps_per_slice: int = setting(5, min=1)
    max_steps: int = setting(300, min=1)
    warmup_steps: int = setting(20, min=0)
    w1: float = setting(1.0, min=0.0)
    w2: float = setting(1.0, min=0.0)
    tau: float = setting(0.0)
    delta_acc_max: float = setting(0.2, min=1e-6)
    drift_max: float = setting(0.3, min=1e-6)
    patience: int = setting(3, min=1, help="slices with S_t <= tau before stopping")
    min_improvement: float = setting(0.005, min=0.0, max=1.0,
                                     help="held-out accuracy gain that counts as progress (early stopping)")
    early_stopping: bool = True  # false: every run takes max_steps (fixed-budget baseline)
    share: float = setting(0.3, min=0.01, max=1.0, help="max share of compute time over the window")
    share_window_s: float = setting(10.0, min=0.1)
    max_backlog: int = setting(8, min=0)
    preempt_s: float = setting(5.0, min=0.0, help="inference backlog this long ends a run (best head so far)")
    threads: int = setting(1, min=0, help="torch threads in the retrain process, 0 = torch default")
    device: str = "cpu"
    #: on a CPU device, the retrain process's scheduling class: idle (SCHED_IDLE: only CPU time
    #: inference leaves; inference keeps 0.97x its speed), low (nice 10: training still gets a
    #: share when inference keeps every core busy, as on a file read at full speed), normal, or
    #: auto: low when a source is read at full speed, else idle
    cpu_priority: Literal["auto", "idle", "low", "normal"] = "auto"
    reptile: bool = True
    reptile_eps_min: float = setting(0.05, min=0.0, max=1.0)
    reptile_eps_max: float = setting(0.5, min=0.0, max=1.0)
    reptile_ewma: float = setting(0.1, min=0.0001, max=1.0)
    republish_s: float = setting(5.0, min=0.1)
    keep_versions: int = setting(10, min=2)
    seed: int = 0


@dataclass
class MemoryConfig:
    """Episodic memory (DESIGN §10): accepted labels that infer consults at once, no retraining."""

    enabled: bool = True
    capacity: int = setting(5000, min=1, max=10_000_000, help="stored labels per modality")
    k: int = setting(8, min=1, max=256, help="neighbours that vote")
    temperature: float = setting(0.05, min=1e-4, max=10.0, help="softmax temperature of the similarity vote")
    duplicate_similarity: float = setting(0.98, min=0.0, max=1.0, help="a same-label item this similar is not stored")
    known_surprise: float = setting(0.5, min=0.0, max=1.0,
                                    help="below this surprise (1 - head's p(label)) an item is evicted first")
    calibration_window: int = setting(100, min=1, help="newest labels the blend weight is calibrated on")
    min_calibration: int = setting(16, min=1, help="labels scored before the blend may move off the head")
    ivf_min: int = setting(50000, min=1, help="stored items from which CPU search uses a FAISS IVF index")
    path: str = "buffer/memory.npz"
    persist_every: int = setting(16, min=1, help="writes between atomic saves")
    persist_interval_s: float = setting(2.0, min=0.0)
    prune_margin: float = setting(0.3, min=0.0, max=1.0,
                                  help="consolidation prunes items the new head gets right by this margin")
    sleep_fill: float = setting(0.8, min=0.01, max=1.0, help="memory fill that triggers consolidation")
    sleep_quiet_s: float = setting(120.0, min=0.0, help="seconds without a label that trigger consolidation (0 = off)")
    sleep_min_items: int = setting(32, min=1, help="stored items before a quiet stream consolidates")


@dataclass
class ZooConfig:
    """Specialist zoo (DESIGN §10): every accepted head kept with a scene key, recalled on return."""

    enabled: bool = True
    path: str = "zoo"
    resident: int = setting(4, min=1, max=1000, help="specialists held on the device at once")
    capacity: int = setting(5000, min=1, help="specialists kept on disk (oldest, least recalled go first)")
    prototypes: int = setting(8, min=1, max=64, help="prototype embeddings in a scene key")
    recall_window: int = setting(32, min=4, max=10000, help="recent items that describe the current scene")
    recall_margin: float = setting(0.03, min=0.0, max=2.0,
                                   help="how much better a zoo key must match the scene than the serving one")
    recall_labels: int = setting(8, min=0, help="newest labels a recalled specialist is checked on")
    routing: Literal["scene", "batch"] = setting("scene", help="scene: swap on a scene change; batch: per batch")
    #: A zoo shared by a fleet: a folder every host mounts, or redis://HOST/DB?stream=KEY. Each
    #: specialist this pipeline keeps is published there; the fleet's are imported when they fit.
    share: str | None = None
    fleet: str = setting("default", help="the fleet's name: specialists of another fleet are refused")
    origin: str = setting("", help="this pipeline's name in the fleet (default: HOST-OUTDIR)")
    share_every_s: float = setting(5.0, min=0.1, max=3600.0, help="how often the shared zoo is read")
    fleet_check_labels: int = setting(3, min=1, help="local labels a fleet specialist must be checked on before it serves")
