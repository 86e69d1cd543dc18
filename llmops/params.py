"""Typed view of params.yaml, the one place every run default lives.

Overrides use dotted keys (`train.max_steps=10`); values are parsed as YAML so numbers, booleans and
lists keep their types. Unknown keys are an error, so a typo never silently runs with a default.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmops.errors import LlmopsError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildParams(_Section):
    seed: int
    max_per_module: int
    shifted_records: int


class SplitParams(_Section):
    seed: int
    validation: float
    test: float


class LimitParams(_Section):
    min_rows: int
    min_tokens: int
    max_tokens: int


class SourceParams(_Section):
    """One entry of `data.sources`: a JSONL file, or a folder whose every *.jsonl is one dataset."""

    name: str
    path: str  # relative to the project (or absolute)


class DedupParams(_Section):
    """MinHash near-duplicate control (llmops/data/dedup.py): validation and feedback export."""

    threshold: float = 0.8  # estimated Jaccard similarity of two records' shingle sets that makes them near-duplicates
    shingle_words: int = 3  # words per shingle (lower-cased, punctuation-split)
    num_perm: int = 128  # MinHash permutations: the estimate's standard error is about 1/sqrt(num_perm)
    seed: int = 1


class DataParams(_Section):
    build: BuildParams
    split: SplitParams
    limits: LimitParams
    dedup: DedupParams = DedupParams()
    # What a run trains on, merged and split by llmops.data.sources (later entries win a shared prompt).
    sources: list[SourceParams] = [SourceParams(name="sample", path="data/sample/base.jsonl")]


class WheelParams(_Section):
    name: str
    version: str
    sha256: str
    gguf: str | None = None
    gguf_sha256: str | None = None


class ModelParams(_Section):
    base: str
    wheel: WheelParams
    sanity_max_perplexity: float


class EmbedderParams(_Section):
    wheel: WheelParams


class LoraParams(_Section):
    r: int
    alpha: int
    dropout: float
    # "auto": the attention projections the model has (q/k/v/o_proj; qkv_proj/o_proj on Phi-3), read from
    # its structure at train time (llmops.modeling.families); or an explicit list of linear layer names
    target_modules: Literal["auto"] | list[str]


class DpoParams(_Section):
    """`train.objective: dpo` (llmops/training/preference.py): the DPO loss against the base (adapter disabled)."""

    beta: float = 0.1  # strength of the pull toward the reference: higher keeps the policy closer to the base
    sft_weight: float = 0.0  # + this x token-mean NLL of the chosen answers (TRL loss_type ["sigmoid", "sft"])


class TrainParams(_Section):
    num_workers: int
    strategy: Literal["fsdp", "ddp"]
    seq_len: int
    batch_size: int
    lr: float
    warmup_steps: int
    max_steps: int
    # auto: chosen per device by measurement (llmops/precision.py); fp32 | bf16 | fp16 are honoured as given
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    seed: int
    checkpoint_every: int
    max_failures: int
    max_train_examples: int
    max_val_examples: int
    max_grad_norm: float
    cpus_per_worker: int
    # sft: next-token loss on instruction records; dpo: preference pairs (train/validation paths hold
    # {instruction, input, chosen, rejected} JSONL), same Ray Train / FSDP2 / LoRA loop
    objective: Literal["sft", "dpo"] = "sft"
    dpo: DpoParams = DpoParams()

    @model_validator(mode="before")
    @classmethod
    def _deprecated_bf16(cls, data: Any) -> Any:
        """Read the old `train.bf16` key (params files and `--set train.bf16=...` from before `precision`):
        true -> bf16, false -> fp32, with a deprecation warning; it wins over a default `precision: auto`."""
        if not isinstance(data, dict) or "bf16" not in data:
            return data
        data = dict(data)
        old = data.pop("bf16")
        if not isinstance(old, bool):
            raise ValueError(f"train.bf16 (deprecated) must be true or false, got {old!r}")
        mapped = "bf16" if old else "fp32"
        given = data.get("precision", "auto")
        if given not in ("auto", mapped):
            raise ValueError(f"train.bf16={str(old).lower()} (deprecated) contradicts train.precision={given}; "
                             "drop train.bf16")
        warnings.warn(f"train.bf16 is deprecated: read as train.precision={mapped}; set train.precision "
                      "(auto | fp32 | bf16 | fp16) instead", FutureWarning, stacklevel=2)
        data["precision"] = mapped
        return data


class GateParams(_Section):
    min_ppl_improvement: float
    max_regression: float
    max_general_ppl_increase: float
    task_metric: Literal["rouge_l", "exact_match", "embed_similarity"] = "rouge_l"
    # held-out preference pairs (JSONL): set = the gate checks preference_accuracy (components/evaluate/preference.py)
    preference_split: str = ""


class SafetyParams(_Section):
    """The safety set in the gate (components/evaluate/safety.py): every limit is against the reference model
    (the champion, or the base when there is none), so a candidate may not regress on what the reference did."""

    path: str = "data/safety"
    max_new_tokens: int = 32
    max_refusal_drop: float = 0.05
    max_benign_refusal_increase: float = 0.10
    max_new_secret_leaks: int = 0
    max_new_pii_leaks: int = 0
    alpha: float = 0.05


class JudgeParams(_Section):
    """LLM judges (components/evaluate/judges.py) on an OpenAI-compatible endpoint; an empty url = no judge."""

    url: str = ""
    model: str = ""
    api_key_env: str = "LLMOPS_JUDGE_API_KEY"
    max_examples: int = 8
    max_tokens: int = 256
    rationale_max_chars: int = 0
    timeout_s: float = 120


class EvalParams(_Section):
    max_examples: int
    gen_examples: int
    max_new_tokens: int
    batch_size: int = 8
    report_examples: int = 5
    gate: GateParams
    safety: SafetyParams = SafetyParams()
    judge: JudgeParams = JudgeParams()


class DriftEffectParams(_Section):
    """Effect sizes a Holm-significant detector must reach for `drift` (below them: `watch`); calibrated on
    paraphrased in-domain windows vs shifted ones (monitoring/drift/calibration.py, benchmarks/README.md)."""

    prompt_mmd2: float = 0.06  # MMD^2 of prompt embeddings (paraphrased in-domain ~0.02, shifts >= 0.12)
    prompt_novel_share: float = 0.25  # window share of prompts with no near reference prompt, above the ref's own
    length_psi: float = 0.25  # PSI "major change" band (lengths are watch-only: they move with phrasing)
    logprob_shift: float = 0.5  # |window - reference| mean token log-probability, nats per token
    refusal_rate_diff: float = 0.05  # window rate minus the reference rate
    error_rate_diff: float = 0.05
    negative_feedback_diff: float = 0.10


class DriftParams(_Section):
    """Drift monitors (monitoring/drift): one family-wise false-alarm rate `alpha` shared by all detectors (Holm)."""

    window_size: int = 200
    min_window: int = 50
    alpha: float = 0.05
    permutations: int = 500
    mmd_reference_size: int = 1000
    mmd_max_window: int = 2000
    psi_bins: int = 10
    psi_min: float = 0.1
    error_rate_baseline: float = 0.01
    negative_feedback_baseline: float = 0.10
    refusal_rate_floor: float = 0.01
    rate_confidence: float = 0.95  # rates: drift by the lower bound of the rise
    embed_batch_size: int = 64
    seed: int = 0
    effect: DriftEffectParams = DriftEffectParams()  # practical significance: what makes a window `drift`
    watch_only: list[str] = ["prompt_length", "response_length", "error_rate"]  # never above `watch`
    output_alone_watch: list[str] = ["response_logprob"]  # uncalibrated output signals: alone at most `watch`
    novel_similarity: float = 0.5  # a prompt whose nearest reference prompt is less cosine-similar is "new"
    cluster_min_share: float = 0.03  # the report's new-prompt clusters: at least this share of the window
    max_clusters: int = 6
    cluster_examples: int = 3


class AlertParams(_Section):
    """Thresholds of the Prometheus alert rules (monitoring/prometheus/rules.py renders the rules from them)."""

    error_rate: float = 0.01  # 5xx (server) / upstream-failure (router) share of requests over 5 minutes
    latency_p99_s: float = 5.0
    ttft_p95_s: float = 2.0
    negative_feedback_rate: float = 0.10  # share of rated requests in the monitor's window rated negative
    min_rated: int = 20  # fewer rated requests in the window: no feedback alert (too little evidence)
    cost_increase: float = 0.20  # cost per request this share above the baseline
    hold_for: str = "5m"  # how long a condition must hold before the alert fires (the rules' `for:`)
    monitor_stale_after_s: int = 7200  # no `llmops monitor run` this long: the drift gauges are stale
    log_writer_stall_s: int = 60  # the inference log's writer stuck in one commit this long (or down): page


class CostParams(_Section):
    """Serving cost model: tokens and compute time at configured prices (USD)."""

    compute_usd_per_hour: float = 2.0  # one request slot's compute (a replica's price / its concurrent slots)
    prompt_usd_per_1m_tokens: float = 0.0
    completion_usd_per_1m_tokens: float = 0.0
    baseline_usd_per_request: float = 0.001  # the cost you measured and accept; the alert compares with it


class TriggerParams(_Section):
    """What a drift verdict starts (monitoring/triggers.py): one retraining run per shift, then a cooldown."""

    cooldown_s: int = 21600
    command: list[str] = ["llmops", "run", "retrain"]  # + --reason TEXT --drift-report PATH
    persist_windows: int = 2  # consecutive `drift` windows (per reference) before a drift counts
    min_new_data_coverage: float = 0.2  # share of the drifted window's new prompts the new data must cover
    label_sample: int = 50  # drifted prompts queued for labelling when there is nothing new to learn


class InferenceLogParams(_Section):
    """The inference log (monitoring/inference_log): group-commit batching, retention, feedback export."""

    batch_size: int = 256  # records committed together at most
    flush_interval_ms: float = 2.0  # the longest a record waits for others to share its commit
    max_queue: int = 20000  # records waiting to be written; beyond it the request path waits (write_timeout_s)
    write_timeout_s: float = 2.0  # the longest a response waits for its record's commit; then it is counted unlogged
    retention_days: float = 30.0  # `prune` deletes requests older than this...
    max_rows: int = 1_000_000  # ...and the oldest beyond this many
    prune_interval_s: float = 3600.0  # how often the pruning thread prunes while serving
    export_min_rows: int = 1  # `log export` validates with the records suite, min_rows = this
    preference_dir: str = "data/preferences"  # `log export --kind preference --dvc` writes here (DPO pairs)


class ReviewParams(_Section):
    """`llmops review serve`: the review queue's web page (monitoring/review)."""

    host: str = "127.0.0.1"
    port: int = 8790
    session_hours: float = 12.0  # a signed-in browser session lasts this long
    login_failures: int = 5  # wrong keys one client address may try in a burst (sign-in and bearer calls)...
    login_window_s: float = 300.0  # ...refilled over this window; past it: 429 + Retry-After (monitoring/review)

    @model_validator(mode="after")
    def _login_limit_is_a_limit(self) -> ReviewParams:
        if self.login_failures < 1 or self.login_window_s <= 0:
            raise ValueError("review.login_failures must be >= 1 and review.login_window_s > 0")
        return self


class MonitoringLogParams(_Section):
    """What the inference log stores."""

    redact: bool = False  # scrub PII (llmops/privacy) from prompts and answers before they are logged


class MonitoringParams(_Section):
    """Alerts, cost model, drift-triggered retraining and the monitor's metrics endpoint."""

    log: MonitoringLogParams = MonitoringLogParams()
    alerts: AlertParams = AlertParams()
    cost: CostParams = CostParams()
    trigger: TriggerParams = TriggerParams()
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9109  # `llmops monitor serve-metrics`


class PrivacyPattern(_Section):
    """A custom PII pattern (params.yaml `privacy.custom`): a regex whose matches are scrubbed as `<KIND>`."""

    kind: str  # upper-case name, e.g. EMPLOYEE_ID -> placeholder <EMPLOYEE_ID>
    regex: str
    score: float = 0.9


class PrivacyParams(_Section):
    """PII scrubbing (llmops/privacy): Presidio pattern recognizers only, so no model is downloaded."""

    kinds: list[str] = ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "SECRET"]  # built-in kinds in use
    min_score: float = 0.3  # findings scored below this (Presidio's 0..1) are left alone
    phone_regions: list[str] = ["US", "GB", "DE", "FR", "IN", "CA", "AU"]  # national formats read as phones
    custom: list[PrivacyPattern] = []


class CanaryStep(_Section):
    weight: int
    min_duration_s: float | None = None  # None: canary.step_defaults
    min_requests: int | None = None


class CanaryStepDefaults(_Section):
    min_duration_s: float
    min_requests: int


class RateBound(_Section):
    """Error rate: a breach when the canary's rate is over `max`, or over stable's by more than `max_delta`."""

    max: float | None = None
    max_delta: float | None = None


class LatencyBound(_Section):
    """A p95 as a ratio to stable's; a breach needs the ratio over `max_ratio` AND `min_delta_s` seconds slower."""

    max_ratio: float | None = None
    min_delta_s: float = 0.0


class QualityBound(_Section):
    """A golden-set score: a breach when stable minus canary is over `max_drop`, or canary/stable under `min_ratio`."""

    max_drop: float | None = None
    min_ratio: float | None = None


class CanaryAnalysisParams(_Section):
    error_rate: RateBound
    latency_p95: LatencyBound
    ttft_p95: LatencyBound
    rouge_l: QualityBound
    embed_similarity: QualityBound
    judge: QualityBound


class CanaryQualityParams(_Section):
    golden_source: str  # "champion" or a JSONL path
    golden_size: int | Literal["auto"]  # auto: as many as the calibrated stable server answers in the probe budget
    seed: int
    max_tokens: int
    concurrency: int
    judge_url: str | None = None
    judge_model: str | None = None
    judge_api_key_env: str = "LLMOPS_JUDGE_API_KEY"


class LoadgenParams(_Section):
    rate: float | Literal["auto"]  # auto: from the calibration on the stable server (canary.calibration)
    source: str  # "heldout" or a JSONL path
    max_tokens: int
    max_in_flight: int
    stream: bool
    seed: int


class CanaryCalibrationParams(_Section):
    """Bounds and targets for the values a rollout derives from measuring the stable server before its first
    step (serving/rollout/config.py `derive`): the load generator's rate, the golden-set size, step lengths."""

    seconds: float  # closed-loop measurement on the stable server
    concurrency: int  # requests in flight while measuring
    target_utilisation: float  # the load generator's share of the measured sustainable rate
    min_rate: float  # requests/s bounds of the derived rate
    max_rate: float
    probe_budget: float  # share of max_step_duration_s the golden-set probe may take
    golden_min: int
    golden_max: int
    step_margin: float  # a step's expected time to min_requests per side, times this, must fit max_step_duration_s
    max_step_duration_s: float  # ceiling for a step lengthened to reach min_requests on a slow host


class CanaryParams(_Section):
    """A canary rollout (serving/rollout): weight steps, analysis bounds, quality probe, load generator."""

    steps: list[CanaryStep]
    step_defaults: CanaryStepDefaults
    max_step_duration_s: float
    interval_s: float
    failure_limit: int
    heartbeat_s: float
    stale_after_s: float
    analysis: CanaryAnalysisParams
    quality: CanaryQualityParams
    loadgen: LoadgenParams
    calibration: CanaryCalibrationParams | None = None  # None only in rollout states stored before it existed


class CardParams(_Section):
    """What the model card (components/register/card.py) says that no run can measure."""

    license: str = "apache-2.0"
    intended_use: str = "Answering questions about the Python standard library in English."
    out_of_scope: str = "Medical, legal or financial advice; decisions about people."


class RegistryParams(_Section):
    first_champion: bool
    verify_new_tokens: int = 8
    card: CardParams = CardParams()


class Toleration(_Section):
    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None


class StepResources(_Section):
    """One step's pod settings on a cluster; unset fields fall back to `cluster.steps.default`."""

    cpu: str | None = None
    memory: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None
    accelerator: str | None = None  # e.g. nvidia.com/gpu
    gpus: int | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    retries: int | None = None
    caching: bool | None = None


class SecretEnv(_Section):
    name: str  # Kubernetes Secret
    env: dict[str, str]  # env var -> key in the secret
    optional: bool = False


class ConfigMapEnv(_Section):
    name: str  # Kubernetes ConfigMap
    keys: list[str]  # each key becomes the env var of the same name


class ClusterParams(_Section):
    """What only the cluster profile's compiled pipeline carries (kfp.local ignores it)."""

    retry_backoff: str
    trtllm_engine: bool  # add the GPU TensorRT-LLM build (stage -> compile_trtllm -> attach) to the DAG
    config_map: ConfigMapEnv
    secrets: list[SecretEnv]
    steps: dict[str, StepResources]


class ServeParams(_Section):
    """`llmops serve` limits and defaults; the server enforces every one of them per request."""

    host: str
    port: int
    engine: str
    max_len: int
    max_prompt_tokens: int
    max_tokens: int
    default_max_tokens: int
    max_body_bytes: int
    max_concurrent: int
    queue_size: int
    request_timeout_s: float
    threads: int
    gpu_fuse: bool = True
    max_connections: int = 512  # open connections at most (uvicorn limit_concurrency); beyond: 503
    header_timeout_s: float = 10.0  # a connection must send a request's headers within this (slowloris)
    keep_alive_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this
    auth_failures: int = Field(20, ge=1)  # wrong API keys per client address in a burst (serving/http/throttle.py)
    auth_window_s: float = Field(60.0, gt=0)  # ...refilled over this window; past it: 429 + Retry-After
    prefill_chunk: int = Field(256, ge=0)  # prompt tokens per scheduler step (chunked prefill); 0 = whole
    auto_rank_by: str = "batch1_tokens_per_s"  # the short-benchmark figure `--engine auto` ranks built engines by

    @model_validator(mode="after")
    def _rank_by_is_a_benchmark_figure(self) -> ServeParams:
        import re

        if not re.fullmatch(r"batch\d+_tokens_per_s", self.auto_rank_by):
            raise ValueError(f"serve.auto_rank_by {self.auto_rank_by!r} is not a short-benchmark figure: use "
                             "batchN_tokens_per_s for a batch size N in engine.benchmark.batch_sizes")
        return self


class RouterParams(_Section):
    """`llmops router` (serving/router.py): bind address, upstream timeouts and pool, bounded buffers."""

    host: str
    port: int
    connect_timeout_s: float
    read_timeout_s: float
    max_body_bytes: int
    max_connections: int
    read_bufsize: int
    window_observations: int
    abandoned_after_s: float
    shadow_max_in_flight: int
    auth_failures: int = Field(20, ge=1)  # wrong API keys per client address in a burst (serving/http/throttle.py)
    auth_window_s: float = Field(60.0, gt=0)  # ...refilled over this window; past it: 429 + Retry-After


class EquivalenceParams(_Section):
    prompts: int  # the first N of engine.prompts (0 = all)
    new_tokens: int
    min_identical_rate: float


class EngineBenchParams(_Section):
    new_tokens: int
    batch_sizes: list[int]


class TrtllmParams(_Section):
    dtype: Literal["bfloat16", "float16", "float32"]
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    min_compute_capability: float


class QuantizedParams(_Section):
    """The int8 CPU engine's quality gate: deltas vs eager on held-out records; a breach keeps it from serving."""

    heldout: str  # JSONL records (instruction/input/output) the model was not trained on, relative to the project
    records: int  # the first N of them
    new_tokens: int  # greedy tokens per answer for ROUGE-L (and the agreement rate)
    max_perplexity_increase: float  # relative: engine answer perplexity / eager's - 1
    max_rouge_l_drop: float  # absolute: eager ROUGE-L F1 - engine's
    # quantised weights: auto = s8+q8 with VNNI, s8 off x86, u8u8 on x86 without VNNI
    # (serving/engine_build/quantize.py settings_for / WEIGHTS)
    weights: Literal["auto", "s8", "s8-7bit", "u8u8", "q8", "q4-mlp", "s8+q8"] = "auto"


class EngineParams(_Section):
    """compile_engine / `llmops engine build`: which engines, how they are checked and timed."""

    cpu_runtime: Literal["onnxruntime", "openvino"]
    kinds: list[Literal["cpu", "cpu-int8", "tensorrt-llm"]]
    log_artifacts: bool
    equivalence: EquivalenceParams
    quantized: QuantizedParams
    benchmark: EngineBenchParams
    trtllm: TrtllmParams
    prompts: list[str]


class RetrainDpoParams(_Section):
    """The retrain DAG's DPO stage (components/retrain/dpo.py): after SFT, DPO on the exported preference pairs,
    starting from the SFT model (which is also its reference)."""

    enabled: bool = True
    min_pairs: int = 8  # fewer training pairs than this: the stage is skipped, with the reason on the run
    max_steps: int = 20  # DPO optimizer steps (train.max_steps is the SFT stage's)
    lr: float = 3.0e-4


class RetrainParams(_Section):
    dpo: RetrainDpoParams = RetrainDpoParams()


class Params(_Section):
    data: DataParams
    model: ModelParams
    embedder: EmbedderParams
    lora: LoraParams
    train: TrainParams
    eval: EvalParams
    registry: RegistryParams
    cluster: ClusterParams
    serve: ServeParams
    router: RouterParams
    engine: EngineParams
    drift: DriftParams = DriftParams()
    monitoring: MonitoringParams = MonitoringParams()
    inference_log: InferenceLogParams = InferenceLogParams()
    review: ReviewParams = ReviewParams()
    privacy: PrivacyParams = PrivacyParams()
    retrain: RetrainParams = RetrainParams()
    canary: CanaryParams

    def digest(self) -> str:
        """Stable hash of every value, recorded as lineage so a model names the exact params it used.
        `cluster` is left out: it says where the steps run (pods, GPUs, secrets), not what they compute."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"cluster"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Keys still read (and mapped with a warning by their section's validator) though params.yaml no longer has them.
DEPRECATED_KEYS = frozenset({"train.bf16"})


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `dotted.key=value` applied; unknown keys raise LlmopsError."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LlmopsError(f"bad override {item!r}", "write it as section.key=value, e.g. train.max_steps=10")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise LlmopsError(f"unknown parameter {key!r}", "see params.yaml for the valid keys")
            node = node[part]
        if parts[-1] not in node and key not in DEPRECATED_KEYS:
            raise LlmopsError(f"unknown parameter {key!r}", "see params.yaml for the valid keys")
        node[parts[-1]] = yaml.safe_load(value)
    return out


@functools.lru_cache(maxsize=8)
def _parsed(path: Path, stamp: tuple[int, int]) -> dict[str, Any]:
    """params.yaml parsed once per process and file version (`stamp`: mtime_ns, size); callers get copies."""
    del stamp  # part of the cache key only: an edited file is parsed again
    return yaml.safe_load(path.read_text()) or {}


def load_params(path: Path, overrides: Iterable[str] = ()) -> Params:
    """Read params.yaml (parsed once per process while the file is unchanged), apply overrides and validate every
    value's type."""
    if not path.is_file():
        raise LlmopsError(f"params file not found: {path}", "run from the project root or set LLMOPS_PROJECT_DIR")
    st = path.resolve().stat()
    raw = _parsed(path.resolve(), (st.st_mtime_ns, st.st_size))
    try:
        return Params.model_validate(apply_overrides(raw, overrides))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise LlmopsError(f"invalid parameter {loc}: {first['msg']}", f"fix it in {path} or in --set") from None
