"""The pipeline's own sections: sources, decode, infer, sink, metrics, transport, supervisor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from remembrall.config.base import section, setting


@dataclass
class SourceConfig:
    """One input stream. ``uri`` is a path, ``rtsp://…``, ``http(s)://…``, ``/dev/videoN``,
    ``builtin:NAME`` (a video a package ships), or for text: a path, ``-`` (stdin),
    ``zmq+pull:tcp://…``, ``http+listen://127.0.0.1:PORT``."""

    uri: str = "builtin:bigbuckbunny"
    id: str = ""
    #: ``auto`` decides from the URI (and a .jsonl file's first line); ``video`` is a synonym of ``vision``.
    modality: Literal["auto", "vision", "video", "text"] = "auto"
    live: Literal["auto", "yes", "no"] = "auto"
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    timeout_s: float = setting(5.0, min=0.1)
    reconnect_initial_s: float = setting(0.5, min=0.01)
    reconnect_max_s: float = setting(10.0, min=0.01)
    max_reconnects: int = setting(0, min=0, help="0 retries forever")
    loop: int = setting(1, min=0, help="times to play a file; 0 loops forever")
    max_fps: float | None = setting(None, min=0.01)
    #: play a file (or manifest) at its frame rate (max_fps if set), as a camera would deliver it
    realtime: bool = False
    labels: str | None = None


@dataclass
class DecodeConfig:
    width: int | None = setting(224, min=8, max=8192)
    height: int | None = setting(224, min=8, max=8192)
    threads: int = setting(0, min=0, help="decoder threads, 0 = FFmpeg's choice")
    #: scheduling class of the decode processes: low (nice 10) lets them run in inference's gaps
    #: rather than in the middle of a batch (+11-19 % pipeline fps on 2 cores, bench.throughput);
    #: idle and normal as for retrain
    cpu_priority: Literal["idle", "low", "normal"] = "low"
    max_decode_errors: int = setting(100, min=0, help="consecutive undecodable packets before a file is abandoned")


@dataclass
class InferConfig:
    backbone: Literal["efficientnet-lite0"] = "efficientnet-lite0"
    #: onnxruntime: the vision backbone on ONNX Runtime's CPU provider (heads stay PyTorch)
    backend: Literal["torch", "onnxruntime"] = "torch"
    device: str = "auto"
    half: Literal["auto", "yes", "no"] = "auto"
    batch_size: int = setting(16, min=1, max=1024)
    max_wait_ms: float = setting(20.0, min=0.0)
    image_size: int = setting(224, min=32, max=1024)
    threads: int = setting(0, min=0, help="torch CPU threads, 0 = all cores")
    topk: int = setting(5, min=1, max=100)
    head: str = setting("imagenet", help="vision base head: 'imagenet', a head checkpoint path, or 'none' (cold start)")
    text_head: str = setting("none", help="text base head: a head checkpoint path, or 'none' (cold start)")
    queue: int = setting(32, min=1, help="frames infer holds ahead of its batches (more only adds latency)")
    omp_spin_us: float = setting(200.0, min=0.0, max=100_000.0,
                                 help="µs infer's OpenMP threads spin before they sleep (GNU OpenMP); 0 = passive")


@dataclass
class SinkConfig:
    path: str = "predictions.jsonl"
    pub: str | None = None
    flush_every: int = setting(32, min=1)
    #: Brokers that also get every prediction line (``mqtt://HOST/TOPIC?qos=1``,
    #: ``redis://HOST/DB?stream=KEY&maxlen=N``; ``events=yes`` adds the run's model events);
    #: credentials come from the environment, see docs/brokers-sink.md.
    brokers: list[str] = section(list)
    broker_buffer: int = setting(10000, min=1, help="messages kept per broker while it is unreachable; "
                                 "beyond, the oldest are dropped")


@dataclass
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = setting(9108, min=0, max=65535)
    enabled: bool = True


@dataclass
class ServeConfig:
    """``remembrall serve``: labels (a teacher, or humans) and training steps that many pipelines share."""

    bind: str = setting("tcp://127.0.0.1:5557", help="tcp://HOST:PORT (CURVE) or ipc://PATH")
    secret_key: str = setting("", help="the server's key pair file (NAME.key_secret)")
    allowed_keys: str = setting("", help="folder of the client public keys (NAME.key) it serves")
    labels: bool = setting(True, help="serve label requests with the label section's labeler")
    training: bool = setting(True, help="run training steps for pipelines with retrain.remote")
    train_device: str = setting("auto", help="where training runs: auto (cuda when present), cpu, cuda:N")
    queue: int = setting(256, min=1, max=100000, help="label requests queued per pipeline; beyond, 'busy'")
    answers: int = setting(1024, min=1, max=1000000,
                           help="answers kept per pipeline while it is away, sent when it returns")
    threads: int = setting(0, min=0, max=256, help="torch threads of the server (0 = torch's default)")


@dataclass
class UIConfig:
    """The browser UI the supervisor serves beside the metrics endpoint (pages ``/``, ``/live``,
    ``/label``, ``/learning``). Anything that changes state needs the token in ``OUT/ui-token``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = setting(8108, min=0, max=65535, help="0 = any free port (written to status.json)")
    #: binding a non-loopback host exposes labelling and control to the network: an explicit decision
    allow_remote: bool = False
    live_fps: float = setting(2.0, min=0.1, max=30.0, help="frames per second per stream the live view may get")
    max_viewers: int = setting(100, min=1, help="live connections at once; more are answered 503")
    undo_s: float = setting(5.0, min=0.0, max=600.0, help="seconds a label waits, undoable, before it enters the pipeline")
    max_request_bytes: int = setting(16384, min=256, max=1 << 20)
    grafana_url: str | None = None


@dataclass
class TransportConfig:
    hwm: int = setting(16, min=1, help="messages queued per socket before backpressure (drop for live, block for files)")
    max_message_bytes: int = setting(64 << 20, min=1024)
    allow_remote: bool = False
    at_least_once: bool = setting(True, help="finite sources and the label stage keep what they handed on until "
                                  "it is written, and send it again when a stage on the way restarts")
    window: int = setting(128, min=1, max=65536, help="items a producer holds unacknowledged before it waits")


@dataclass
class SupervisorConfig:
    restart_backoff_s: float = setting(0.5, min=0.0)
    restart_backoff_max_s: float = setting(10.0, min=0.0)
    max_restarts: int = setting(10, min=0)
    drain_timeout_s: float = setting(60.0, min=1.0)
    stage_idle_drain_s: float = setting(5.0, min=0.1)
    #: A stage whose supervisor died saves what it holds locally and exits; past this many
    #: seconds it exits however far it got.
    orphan_exit_s: float = setting(5.0, min=0.5, max=60.0)
    #: A stage whose resident memory grew by this fraction above its steady level gives the
    #: heap's free pages back to the OS (glibc ``malloc_trim``): RSS then tracks live memory,
    #: and a real leak stands out; 0: never.
    heap_trim_growth: float = setting(0.02, min=0.0, max=10.0)
