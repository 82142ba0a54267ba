"""The pipeline's Prometheus metrics: one definition each, shared by every stage process.

Stages run as separate processes, so metrics use prometheus_client's multiprocess mode: each
process writes to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor's one
scrape endpoint aggregates them. The supervisor sets that variable before any stage starts;
without it (a library user, a unit test) the metrics are ordinary in-process ones.

Names follow DESIGN.md §6, prefix ``remembrall_``, labels ``stage`` and ``stream``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LONG_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_SWAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

FRAMES = Counter("remembrall_frames", "Items (frames or texts) a stage processed.", ["stage", "stream"])
DROPPED = Counter(
    "remembrall_frames_dropped",
    "Items dropped, by reason (backpressure, malformed, decode_error, lost, ...).",
    ["stage", "stream", "reason"],
)
LATENCY = Histogram(
    "remembrall_stage_latency_seconds",
    "Time a stage spent on one item (per-item share of a batch for batched stages).",
    ["stage", "stream"],
    buckets=_LATENCY_BUCKETS,
)
E2E_LATENCY = Histogram(
    "remembrall_end_to_end_latency_seconds",
    "Wall time from ingest at the source to the prediction being written.",
    ["stream"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "remembrall_queue_depth", "Items waiting in a stage's input queue.", ["stage", "stream"],
    multiprocess_mode="livesum",
)
SAMPLES_SELECTED = Counter(
    "remembrall_samples_selected", "Samples the select stage kept for labelling.", ["stage", "stream"]
)
BUFFER_SIZE = Gauge(
    "remembrall_buffer_size", "Samples held in the replay buffer.", ["stage", "stream"], multiprocess_mode="livemax"
)
RETRAIN_RUNS = Counter("remembrall_retrain_runs", "Retraining runs started.", ["stage", "stream"])
RETRAIN_SECONDS = Histogram(
    "remembrall_retrain_seconds", "Duration of one retraining run.", ["stage", "stream"], buckets=_LONG_BUCKETS
)
GPU_SHARE = Gauge(
    "remembrall_gpu_share",
    "Share of accelerator (or CPU) time used by retraining over the last window.",
    ["stage", "stream"],
    multiprocess_mode="livemax",
)
MODEL_VERSION = Gauge(
    "remembrall_model_version", "Version of the model a stage serves.", ["stage", "stream"],
    multiprocess_mode="livemax",
)
ONLINE_ACCURACY = Gauge(
    "remembrall_online_accuracy",
    "Prequential accuracy of served predictions where labels exist (running, last window).",
    ["stage", "stream"],
    multiprocess_mode="livemax",
)
SWAP_SECONDS = Histogram(
    "remembrall_swap_seconds", "Time the serving loop paused to swap in a new model.", ["stage", "stream"],
    buckets=_SWAP_BUCKETS,
)
DECODE_ERRORS = Counter(
    "remembrall_decode_errors", "Packets or frames that could not be decoded.", ["stage", "stream"]
)
SOURCE_RECONNECTS = Counter(
    "remembrall_source_reconnects", "Reconnection attempts to a live source.", ["stage", "stream"]
)
SOURCE_CONNECTED = Gauge(
    "remembrall_source_connected", "1 while a source is delivering, 0 while it is (re)connecting.",
    ["stage", "stream"], multiprocess_mode="livemax",
)
STAGE_UP = Gauge(
    "remembrall_stage_up", "1 while a stage process is running (set by the supervisor).", ["stage"],
    multiprocess_mode="livemax",
)
STAGE_RESTARTS = Counter("remembrall_stage_restarts", "Times the supervisor restarted a stage.", ["stage"])

# --- episodic memory and specialist zoo (DESIGN §10); ``modality`` is vision or text
MEMORY_ITEMS = Gauge(
    "remembrall_memory_items", "Labelled items held in the episodic memory.", ["stage", "modality"],
    multiprocess_mode="livemax",
)
MEMORY_WRITES = Counter(
    "remembrall_memory_writes", "Labels offered to the episodic memory, by outcome (stored, duplicate, evicted).",
    ["stage", "modality", "outcome"],
)
MEMORY_QUERIES = Counter(
    "remembrall_memory_queries", "Predictions made while the episodic memory held items.", ["stage", "modality"]
)
MEMORY_HITS = Counter(
    "remembrall_memory_hits", "Predictions the memory's vote took part in (blend weight above zero).",
    ["stage", "modality"],
)
MEMORY_CHANGED = Counter(
    "remembrall_memory_changed", "Predictions whose top class the memory changed from the head's.",
    ["stage", "modality"],
)
MEMORY_BLEND = Gauge(
    "remembrall_memory_blend_weight", "Calibrated weight of the memory's vote in the blend (0 = head alone).",
    ["stage", "modality"], multiprocess_mode="livemax",
)
CONSOLIDATIONS = Counter(
    "remembrall_consolidations", "Sleep consolidations: heads trained on the memory, by outcome.",
    ["stage", "modality", "outcome"],
)
MEMORY_PRUNED = Counter(
    "remembrall_memory_pruned", "Memories pruned after a consolidated head was accepted.", ["stage", "modality"]
)
ZOO_SIZE = Gauge(
    "remembrall_zoo_specialists", "Specialists kept in the zoo (on disk).", ["stage", "modality"],
    multiprocess_mode="livemax",
)
ZOO_RESIDENT = Gauge(
    "remembrall_zoo_resident", "Specialists resident on the inference device.", ["stage", "modality"],
    multiprocess_mode="livemax",
)
ZOO_SHARED = Counter(
    "remembrall_zoo_shared", "Specialists exchanged with the fleet's shared zoo, by outcome "
    "(published, imported, refused, unavailable).", ["stage", "modality", "outcome"]
)
ZOO_RECALLS = Counter(
    "remembrall_zoo_recalls", "Specialists recalled from the zoo (a returning scene).", ["stage", "modality"]
)
ZOO_RECALL_HITS = Counter(
    "remembrall_zoo_recall_hits",
    "Recalls whose specialist beat the head it replaced on the labels that followed.", ["stage", "modality"],
)
DEVICE_MEMORY_BYTES = Gauge(
    "remembrall_device_memory_bytes", "Bytes infer holds on its device for heads, zoo and memory.",
    ["stage", "modality"], multiprocess_mode="livemax",
)

# ---------------------------------------------------------------------------- browser UI
UI_REQUESTS = Counter(
    "remembrall_ui_requests",
    "HTTP requests the UI answered, by route and status code (4xx: refused input, counted).",
    ["route", "code"],
)
UI_VIEWERS = Gauge(
    "remembrall_ui_viewers", "Browsers watching the live view right now.", [], multiprocess_mode="livesum",
)
UI_LABELS = Counter(
    "remembrall_ui_labels", "Labels a person gave in the UI, by outcome (sent, undone, failed).", ["outcome"],
)
UI_LIVE_FRAMES = Counter(
    "remembrall_ui_live_frames", "Preview frames the UI received from infer's side channel.", ["stream"],
)

# ---------------------------------------------------------------------------- cost
STAGE_CPU = Counter(
    "remembrall_stage_cpu_seconds", "CPU seconds a stage process used (user + system, all threads).", ["stage"],
)
STAGE_RSS = Gauge(
    "remembrall_stage_rss_bytes", "Resident memory of a stage process.", ["stage"], multiprocess_mode="livemax",
)
HEAP_RELEASED = Counter(
    "remembrall_heap_released_bytes", "Free heap a stage process gave back to the OS (malloc_trim, supervisor.heap_trim_growth).",
    ["stage"],
)
MODEL_BYTES = Gauge(
    "remembrall_model_bytes", "Bytes the models occupy in infer, by part (backbone, heads, memory, zoo_index).",
    ["stage", "part"], multiprocess_mode="livemax",
)

# ---------------------------------------------------------------------------- delivery
RESENT = Counter(
    "remembrall_resent", "Items a producer handed on again because a stage on the way restarted "
    "(at-least-once delivery; the receiver writes each once).", ["stage", "stream"],
)
UNACKED = Gauge(
    "remembrall_unacked", "Items a producer handed on that are not acknowledged yet.", ["stage", "stream"],
    multiprocess_mode="livesum",
)
WRITE_ERRORS = Counter(
    "remembrall_write_errors", "Writes of a stage's files that failed (full disk, permissions), by file.",
    ["stage", "what"],
)

# ---------------------------------------------------------------------------- brokers (sink.brokers)
BROKER_PUBLISHED = Counter(
    "remembrall_broker_published", "Lines a broker confirmed (MQTT: written, or PUBACK at QoS 1; Redis: XADD), "
    "by broker URL without secrets.", ["stage", "broker"],
)
BROKER_DROPPED = Counter(
    "remembrall_broker_dropped", "Lines not delivered to a broker, by reason: buffer_full (it was unreachable "
    "longer than sink.broker_buffer lasts), refused (credentials or permission), too_large, error, shutdown.",
    ["stage", "broker", "reason"],
)
BROKER_BUFFERED = Gauge(
    "remembrall_broker_buffered", "Lines waiting to be sent to a broker.", ["stage", "broker"],
    multiprocess_mode="livesum",
)
BROKER_CONNECTED = Gauge(
    "remembrall_broker_connected", "1 while connected to the broker, 0 while (re)connecting or refused.",
    ["stage", "broker"], multiprocess_mode="livemax",
)

# ---------------------------------------------------------------- remote label server (CURVE)
REMOTE_PENDING = Gauge(
    "remembrall_remote_pending", "Work a stage holds for its remembrall serve server (label: samples; "
    "retrain: a training run), sent or not.", ["stage"], multiprocess_mode="livesum",
)
REMOTE_UP = Gauge(
    "remembrall_remote_up", "1 while a stage's remembrall serve server answers (CURVE handshake done, pongs "
    "arriving), else 0.", ["stage"], multiprocess_mode="livemax",
)
REMOTE_RESENT = Counter(
    "remembrall_remote_resent", "Work sent to the server again, by reason (timeout: unacknowledged for "
    "remote.timeout_s; restarted: the server came back without it; busy).", ["stage", "reason"],
)
LABEL_SERVER_REQUESTS = Counter(
    "remembrall_label_server_requests", "Label requests a label server took, by client pipeline and outcome "
    "(labelled, rejected, busy, duplicate, malformed).", ["client", "outcome"],
)
LABEL_SERVER_QUEUED = Gauge(
    "remembrall_label_server_queued", "Requests waiting at the label server, by client pipeline.", ["client"],
    multiprocess_mode="livesum",
)
TRAIN_SERVER_JOBS = Counter(
    "remembrall_train_server_jobs", "Training runs a remembrall serve server took for a pipeline, by outcome "
    "(trained, cancelled, refused).", ["client", "outcome"],
)
CURVE_REFUSED = Counter(
    "remembrall_curve_refused", "Peers a CURVE server refused: unknown_key (not in the allowed keys folder) or "
    "handshake (a wrong server key, or not speaking CURVE).", ["reason"],
)
