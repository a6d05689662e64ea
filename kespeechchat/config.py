"""Typed run configuration: one YAML recipe describes a whole run.

Every field is documented where it is declared; unknown keys are errors (``extra="forbid"``).
Secrets (API keys, HF token) never live here: they are read from the environment by name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kespeechchat.backends import registry

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _BackendSection(_Model):
    """A section whose ``backend`` names an adapter registered under ``KIND``
    (``kespeechchat.backends.registry``); an unknown name is refused with the registered ones."""

    KIND: ClassVar[str] = ""

    @field_validator("backend", check_fields=False)
    @classmethod
    def _registered(cls, v: str) -> str:
        registry.get(cls.KIND, v)
        return v


class ColumnMapping(_Model):
    """Where a layout the reader does not know keeps its turns (as LLaMA-Factory's dataset_info says it)."""

    messages: str = Field(description="Key of the list of messages in each record.")
    role: str = Field("role", description="Key of a message's speaker.")
    content: str = Field("content", description="Key of a message's text.")
    user_tag: str = Field("user", description="Speaker value of a user turn.")
    assistant_tag: str = Field("assistant", description="Speaker value of an assistant turn.")
    system_tag: str = Field("system", description="Speaker value of a system message (dropped).")
    system: str | None = Field(None, description="Key of a record-level system prompt (dropped), if any.")


class SourceConfig(_Model):
    path: str = Field(
        description="Text dialogues: a .json / .jsonl / .parquet file (also .gz or .zst compressed; the content "
        "decides whether JSON is an array, one object or JSON Lines), or a folder of such files read as one source "
        "(the Hugging Face layout data/train-*.parquet)."
    )
    format: Literal["auto", "alpaca", "sharegpt", "openai", "firefly", "preference", "self_instruct"] = Field(
        "auto", description="Record layout; 'auto' detects it per record from its keys."
    )
    preference: Literal["chosen", "rejected"] = Field(
        "chosen",
        description="Preference data (a prompt with chosen/rejected answers): which answer is the dialogue.",
    )
    columns: ColumnMapping | None = Field(
        None,
        description="Column mapping of a layout the reader does not know; when set, every record is read with it.",
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="Keep at most this many valid records from this source (deterministic sample).",
    )
    max_chars: int | None = Field(
        None,
        ge=1,
        description="When sampling with `limit`, only consider records whose turns total at most this many characters.",
    )
    languages: list[Literal["zh", "en"]] | None = Field(
        None,
        description="When sampling with `limit`, only consider records identified as one of these languages.",
    )


class InputConfig(_Model):
    sources: list[SourceConfig] = Field(description="Input files, read in order.")
    shard_size: int = Field(
        64, ge=1, description="Dialogues per shard. Shards are fixed at ingest and never re-split."
    )
    seed: int = Field(0, description="Seed of the deterministic per-source sample.")
    dedup: Literal["off", "exact", "near"] = Field(
        "near",
        description="Duplicate dialogues dropped at ingest with reason `duplicate`, the first in input order kept: "
        "'exact' = equal text after normalisation (case, punctuation, spacing, full-width forms); 'near' = that, "
        "or user side and assistant side each at least `near_duplicate_threshold` similar; 'off' = only "
        "byte-identical dialogues.",
    )
    near_duplicate_threshold: float = Field(
        0.7,
        gt=0,
        le=1,
        description="Jaccard similarity (MinHash estimate) of token shingles at which two sides match.",
    )
    near_duplicate_ngram: int = Field(
        3, ge=1, description="Shingle size in tokens (a token is one Han character or one Latin word/number)."
    )


class LLMConfig(_Model):
    backend: Literal["llamacpp", "openai"] = Field(
        "llamacpp",
        description="'llamacpp': the run starts a llama.cpp server on 127.0.0.1 and stops it at the end; "
        "'openai': use already running OpenAI-compatible endpoints (e.g. `vllm serve`).",
    )
    model_path: str | None = Field(
        None,
        description="GGUF file for the managed llama.cpp server; default: the embedded Qwen2.5-Coder-1.5B-Instruct.",
    )
    endpoints: list[str] = Field(
        default_factory=list,
        description="Base URLs (…/v1) of OpenAI-compatible servers, used in round robin.",
    )
    model: str = Field("default", description="Model name sent in requests ('auto' asks the first endpoint).")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (never stored)."
    )
    structured_output: Literal["auto", "json_schema", "json_object_schema"] = Field(
        "auto",
        description="How JSON output is requested: 'json_schema' (OpenAI/vLLM form) or 'json_object_schema' "
        "(llama.cpp form). 'auto' picks by backend.",
    )
    text_pattern: bool = Field(
        True,
        description="Constrain every turn text with a JSON-schema `pattern` that leaves out markup characters "
        "(markdown, code, URLs, brackets). llama.cpp grammars and vLLM (xgrammar, guidance) enforce it while "
        "decoding; set false for a server that rejects or ignores `pattern` (replies are still checked after).",
    )
    concurrency: int = Field(4, ge=1, description="Concurrent requests per endpoint.")
    prefix_concurrency: int | None = Field(
        None,
        ge=1,
        description="Requests in flight at once per prompt family (same system prompt and example: one task in "
        "one language), per stage worker. llama.cpp's server keeps a cached prefix in one slot at a time, so "
        "several requests of one family started together each read the whole prompt again. None: 1 for the "
        "managed llama.cpp server, unlimited for other endpoints (vLLM shares cached prefixes across requests).",
    )
    timeout_s: float = Field(120.0, gt=0, description="Timeout of one request.")
    max_retries: int = Field(
        4, ge=0, description="Retries on 429/5xx/timeouts/connection errors (with backoff)."
    )
    invalid_output_retries: int = Field(
        2, ge=0, description="Re-asks when the reply is not valid JSON for the schema."
    )
    temperature: float = Field(0.2, ge=0, description="Sampling temperature of the text stages.")
    n_ctx: int = Field(4096, ge=512, description="Context size of the managed llama.cpp server.")
    n_threads: int | None = Field(
        None, ge=1, description="Threads of the managed llama.cpp server (default: all cores)."
    )
    server_start_timeout_s: float = Field(
        120.0, gt=0, description="How long to wait for the managed server to answer."
    )
    server_engine: Literal["auto", "native", "python"] = Field(
        "auto",
        description="Managed server: 'native' is llama.cpp's llama-server (built by make install), "
        "decoding `concurrency` requests at once and reusing cached prompt prefixes; 'python' is "
        "llama-cpp-python's server (one request at a time); 'auto' takes native when it is there.",
    )
    engine_model_source: str | None = Field(
        None,
        description="In-cluster alternative (kespeechchat.llm.ray_vllm): the model directory, on storage every GPU "
        "node sees, of the vLLM engine that Ray Data runs inside its actors (nothing is downloaded).",
    )
    engine_replicas: int = Field(
        1, ge=1, description="In-cluster vLLM engines (actors), each on its own GPU group."
    )
    engine_batch_size: int = Field(64, ge=1, description="Rows per batch sent to one in-cluster engine.")
    engine_accelerator_type: str | None = Field(
        None, description="GPU type the in-cluster engines must run on (e.g. 'H100'); None: any GPU."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {
            "max_model_len": 8192,
            "enable_prefix_caching": True,
            "tensor_parallel_size": 1,
        },
        description="Keyword arguments of the in-cluster vLLM engine (tensor_parallel_size, max_model_len, ...).",
    )


class RewriteConfig(_Model):
    mode: Literal["llm", "passthrough"] = Field(
        "llm",
        description="'llm' rewrites each dialogue for speech; 'passthrough' keeps the text (already spoken-style data).",
    )
    max_answer_chars_zh: int = Field(
        120, ge=10, description="Target upper length of a rewritten zh answer, in characters."
    )
    max_answer_words_en: int = Field(
        70, ge=5, description="Target upper length of a rewritten en answer, in words."
    )
    max_tokens: int = Field(512, ge=16, description="Generation limit of one rewrite call.")


class FilterConfig(_Model):
    llm_judge: bool = Field(
        True, description="Ask the LLM whether the dialogue can be spoken naturally and safely."
    )
    min_turn_chars: int = Field(
        2, ge=1, description="Reject a dialogue with a turn shorter than this (characters)."
    )
    max_turn_chars_zh: int = Field(
        300, ge=10, description="Reject a zh dialogue with a turn longer than this (characters)."
    )
    max_turn_chars_en: int = Field(
        900, ge=10, description="Reject an en dialogue with a turn longer than this (characters)."
    )
    max_turns: int = Field(8, ge=2, description="Reject dialogues with more turns than this.")


class SpokenConfig(_Model):
    mode: Literal["llm", "rules"] = Field(
        "llm",
        description="'llm': an LLM spoken-style pass on answers, then text normalisation; 'rules': normalisation only.",
    )
    max_tokens: int = Field(384, ge=16, description="Generation limit of one spoken-style call.")


class VoicesConfig(_Model):
    library: str | None = Field(
        None,
        description="Parquet file of voice recipes (`kespeechchat voices build`); default: build a library "
        "from `pool`, `size` and `seed` into the run.",
    )
    size: int = Field(24, ge=1, description="Number of user voices when the library is built for the run.")
    seed: int = Field(0, description="Seed of the library build and of voice assignment.")
    pool: str | None = Field(
        None,
        description="Identity pool (Parquet) the library is built from; default: the measured Kokoro pool shipped "
        "with the package. CosyVoice needs a pool of sampled speaker embeddings (`voices sample-embeddings`).",
    )
    max_identity_cosine: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Use only identities whose centroid cosines are all at most this (must not exceed the pool's "
        "own bound); default: the pool's bound. Lower means fewer, more clearly distinct speakers.",
    )


class TTSConfig(_BackendSection):
    KIND: ClassVar[str] = "tts"

    backend: str = Field("kokoro", description="TTS backend: a registered adapter (kokoro, cosyvoice).")
    model_dir: str | None = Field(
        None, description="Local model directory (default: the embedded Kokoro model)."
    )
    sample_rate_hz: int = Field(24000, description="Sample rate of the stored audio.")
    num_threads: int = Field(1, ge=1, description="Intra-op threads of the TTS model per worker.")
    sentence_pause_s: float = Field(
        0.25,
        ge=0,
        le=2,
        description="Silence between the sentences of a long turn (Kokoro speaks sentence by sentence).",
    )
    zh_frontend: Literal["sandhi", "misaki"] = Field(
        "sandhi",
        description="Kokoro's Chinese front end: 'sandhi' (phrase dictionary for polyphonic characters, "
        "tone sandhi; kespeechchat.backends.zh_g2p) or 'misaki' (misaki's default: per-word pinyin, no sandhi).",
    )
    source_dir: str | None = Field(
        None,
        description="CosyVoice source checkout (default: $COSYVOICE_ROOT); the PyPI 'cosyvoice' is not it.",
    )
    fp16: bool = Field(False, description="CosyVoice: half precision on GPU.")
    load_jit: bool = Field(
        False, description="CosyVoice: load the TorchScript flow encoder from the model directory."
    )
    load_trt: bool = Field(
        False, description="CosyVoice: load the TensorRT flow decoder plan from the model directory."
    )


class ASRConfig(_BackendSection):
    KIND: ClassVar[str] = "asr"

    backend: str = Field(
        "faster_whisper", description="ASR backend: a registered adapter (faster_whisper, funasr)."
    )
    model_dir: str | None = Field(
        None, description="Local model directory (default: the embedded Whisper base)."
    )
    en_model_dir: str | None = Field(
        None, description="Whisper directory for English with the funasr backend."
    )
    beam_size: int = Field(1, ge=1, description="Beam size of the decoder.")
    num_threads: int = Field(1, ge=1, description="CPU threads of the ASR model per worker.")
    device: str | None = Field(
        None, description="'cpu', 'cuda' or 'cuda:N'; default: cpu for faster_whisper, cuda for funasr."
    )
    pack: bool = Field(
        True,
        description="faster_whisper: pack short clips of one language into one <=30 s window and split the "
        "transcript by word timestamps (Whisper pads every input to 30 s). False: one clip per window.",
    )
    window_s: float = Field(
        25.0, gt=0, le=30, description="Longest packed window, in seconds (faster_whisper)."
    )
    batch_size: int = Field(32, ge=1, description="Clips per batch of the Paraformer model (funasr).")
    recheck_above: float | None = Field(
        0.1,
        ge=0,
        description="A clip whose batched transcript has a higher CER/WER than this is decoded again on its own "
        "and the better transcript is kept: the neighbours in a packed window change what Whisper hears "
        "(24 Kokoro clips: packed zh CER 0.077 vs 0.061 alone), and a re-decode is cheaper than a "
        "re-synthesis. None: never.",
    )


class SpeakerConfig(_BackendSection):
    KIND: ClassVar[str] = "speaker"

    backend: str = Field(
        "resemblyzer",
        description="Speaker-embedding backend: a registered adapter (resemblyzer, pyannote, campplus).",
    )
    model_dir: str | None = Field(
        None,
        description="Local model: a pyannote/WeSpeaker checkpoint, or campplus.onnx / the CosyVoice model "
        "directory holding it; unused by resemblyzer.",
    )
    device: str | None = Field(
        None, description="'cpu' or 'cuda[:N]'; default: cpu for resemblyzer, cuda for pyannote."
    )
    num_threads: int = Field(
        1,
        ge=1,
        description="CPU threads of the encoder per worker (resemblyzer: torch; campplus: onnxruntime).",
    )


class QualityConfig(_BackendSection):
    KIND: ClassVar[str] = "quality"

    backend: str = Field(
        "dnsmos",
        description="Per-utterance quality score written by verify: 'dnsmos' (DNSMOS P.835 OVRL from the "
        "speechmos wheel, an artefact detector) or 'none' (no score; the gate in select is then skipped).",
    )
    num_threads: int = Field(1, ge=1, description="onnxruntime threads of the quality model per worker.")
    personalized: bool = Field(
        False, description="Use the personalised DNSMOS model (penalises interfering talkers)."
    )
    hop_s: float = Field(
        9.0,
        gt=0,
        le=9.01,
        description="Hop between DNSMOS' 9.01 s windows; 1.0 is the reference (about 9x the cost on long clips).",
    )


class RetryConfig(_Model):
    retries: int = Field(
        2,
        ge=0,
        description="Re-syntheses of a turn that fails the select thresholds (each with another seed) before its "
        "dialogue is rejected; done by the repair stage. 0 switches repair off.",
    )
    speed_jitter: float = Field(
        0.06,
        ge=0,
        le=0.3,
        description="Kokoro is deterministic, so a retry changes something real: the voice's speed is scaled by a "
        "seeded factor in [1 - jitter, 1 + jitter] (and the sentence pause by up to twice that). CosyVoice retries "
        "change the sampling seed instead.",
    )
    by_sentence: bool = Field(
        False,
        description="A turn of several sentences that is misheard is redone sentence by sentence: each sentence is "
        "synthesised and checked alone, later attempts redo only the sentences still misheard, the best rendering "
        "of each sentence is kept, and the joined turn is scored again as a whole (select decides on that score). "
        "Off by default: on the demo it accepted the same 12 dialogues as whole-turn retries (its misheard words, "
        "e.g. 双关语, are misheard in every rendering) and took longer.",
    )


class SelectConfig(_Model):
    """Thresholds of the select stage (and of which turns repair re-synthesises).

    Defaults measured with the embedded models (``bench/speaker_bound.py``) on two Kokoro voice
    families: the blend+WORLD library (16 voices, 96 utterances) and the searched identity pool
    (12 voices, 72 utterances); see each field.
    """

    max_cer_zh: float = Field(
        0.10, ge=0, description="Highest CER of an accepted zh utterance (as in the reference work)."
    )
    max_wer_en: float = Field(
        0.10, ge=0, description="Highest WER of an accepted en utterance (as in the reference work)."
    )
    min_speaker_similarity: float = Field(
        0.75,
        ge=-1,
        le=1,
        description="Lowest cosine between an utterance of at least `speaker_short_s` seconds and its voice's "
        "reference probe. resemblyzer, clips >= 2 s: same voice min 0.873 / 0.784 (n=66 / 51), other "
        "identities median 0.65 / 0.69; at 0.75 no genuine clip is rejected and 68-76 % of wrong-identity "
        "(82-85 % of other-gender) turns are; at 0.80, 2 % of genuine turns of the pool would be lost. "
        "Another encoder (pyannote) needs its own bound.",
    )
    min_speaker_similarity_short: float = Field(
        0.65,
        ge=-1,
        le=1,
        description="The bound for turns shorter than `speaker_short_s` (never stricter than min_speaker_similarity): "
        "embeddings of ~1 s clips are noisy, same voice min 0.69 / 0.67 (n=30 / 21).",
    )
    speaker_short_s: float = Field(
        2.0, ge=0, description="Turns shorter than this (seconds) use min_speaker_similarity_short."
    )
    max_silence_ratio: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Highest share of near-silent 20 ms frames (clean Kokoro output: max 0.45, n=168).",
    )
    max_clipping_ratio: float = Field(0.01, ge=0, le=1, description="Highest share of clipped samples.")
    max_repeat_ratio: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Highest share of the speech that repeats earlier speech of the same clip (kespeechchat.audio."
        "repetition_ratio). Clean Kokoro: max 0.02 on ordinary text, up to 0.16 on text that itself repeats a phrase "
        "(n=56); the same clips said twice: 0.33-0.50 (a loop that Whisper transcribes once).",
    )
    min_chars_per_s: dict[str, float] = Field(
        default_factory=lambda: {"zh": 3.0, "en": 8.0},
        description="Slowest plausible rate in spoken characters per second of speech (kespeechchat.metrics."
        "spoken_chars; silence excluded); slower is a loop or stall. Clean Kokoro: zh 3.9-7.5, en 10.1-26.5 "
        "(retries move it by up to 6 %); a loop halves it.",
    )
    max_chars_per_s: dict[str, float] = Field(
        default_factory=lambda: {"zh": 8.5, "en": 32.0},
        description="Fastest plausible rate (same unit); faster means dropped or truncated text.",
    )
    rate_min_chars: dict[str, int] = Field(
        default_factory=lambda: {"zh": 6, "en": 12},
        description="Check the speaking rate only for turns of at least this many spoken characters, per "
        "language: the rate of a two-word turn says little. zh 6 characters are six syllables; en 12 are two or "
        "three words (a one-word turn like 'Goodbye!' is said at 7 characters/s by clean Kokoro voices). A single "
        "number applies to every language.",
    )

    @field_validator("rate_min_chars", mode="before")
    @classmethod
    def _rate_min_chars_per_language(cls, v: Any) -> Any:
        return {"zh": v, "en": v} if isinstance(v, int) else v

    min_dnsmos_ovrl: float | None = Field(
        2.0,
        ge=1,
        le=5,
        description="Lowest DNSMOS OVRL (1-5) of an accepted utterance; None: no quality gate. Clean Kokoro blend "
        "voices: min 2.26, median 3.2 (n=96); real speech with noise at 0 dB SNR: 1.1-1.95. In the identity pool "
        "2 of 12 voices score 1.4-2.6 on most sentences (audible artefacts): the gate drops those turns. "
        "Unmeasured (NaN) is not gated.",
    )


class PackageConfig(_Model):
    target_shard_mb: float = Field(
        500.0,
        gt=0,
        description="Target size of one output Parquet shard, in MB (uncompressed rows, like `datasets`' "
        "max_shard_size). Shards are cut between dialogues, so one dialogue never spans two files.",
    )
    row_group_rows: int = Field(
        100, ge=1, description="Most rows per Parquet row group (small groups stream well)."
    )
    row_group_mb: float = Field(
        64.0,
        gt=0,
        description="Most MB per Parquet row group; a group closes at whichever limit comes first.",
    )
    content_defined_chunking: bool = Field(
        True,
        description="Write Parquet pages with content-defined chunking (as `datasets` does), so a re-upload of a "
        "changed dataset to the Hub's Xet storage sends only the changed chunks.",
    )
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 1.0},
        description="Split name -> share of dialogues (shares sum to 1). A dialogue goes to a split by a hash of "
        "(seed, dialogue_id): deterministic, all its turns together, and stable when more data is added.",
    )
    pretty_name: str = Field(
        "kespeechchat synthetic speech dialogues", description="Name shown on the dataset card."
    )
    license: str = Field(
        "cc-by-nc-4.0", description="Licence of the published dataset (must respect the sources')."
    )
    source_licenses: dict[str, str] = Field(
        default_factory=dict,
        description="Licence of each source text file, by file name (as in the `source_file` column); "
        "quoted on the dataset card, which says 'not declared' for files missing here.",
    )

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, v: dict[str, float]) -> dict[str, float]:
        import re

        if not v:
            raise ValueError("splits must name at least one split, e.g. {train: 1.0}")
        for name, share in v.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(
                    f"split name {name!r}: use letters, digits and '_' (e.g. train, validation, test)"
                )
            if not share > 0:
                raise ValueError(f"split {name!r}: share must be > 0, got {share}")
        total = sum(v.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split shares must sum to 1, got {total:g} ({v})")
        return v


class ExecutorConfig(_Model):
    kind: Literal["local", "ray"] = Field(
        "ray", description="'ray' (local cluster or --address) or 'local' (in-process)."
    )
    address: str | None = Field(None, description="Ray address to join; None starts a local cluster.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray cluster (default: all).")
    object_store_mb: int = Field(256, ge=80, description="Object store of the local Ray cluster, in MiB.")
    stage_workers: dict[str, int] = Field(
        default_factory=dict, description="Actors per stage on Ray (default 1 each); e.g. {synthesize: 2}."
    )
    stage_gpus: dict[str, float] = Field(
        default_factory=dict,
        description="GPUs per actor for a stage on Ray (production: synthesize, verify).",
    )
    max_unit_retries: int = Field(
        3,
        ge=0,
        description="Times a (stage, shard) unit is retried on a fresh actor when its Ray worker dies "
        "(killed, out of memory, node lost); an exception raised by the stage itself is not retried.",
    )
    stall_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Stop the run with a diagnosis (which stage waits for what, what holds it) when work "
        "waits and no actor has run or loaded anything for this long, instead of waiting forever.",
    )
    unit_timeout_s: float | None = Field(
        7200.0,
        gt=0,
        description="Stop the run when one (stage, shard) unit, or a worker's model loading, runs longer "
        "than this; null: no bound. Rerunning resumes from the last finished unit.",
    )


class RunConfig(_Model):
    name: str = Field(description="Run name; the run lives in `<runs_dir>/<name>/`.")
    runs_dir: str = Field("runs", description="Directory that holds runs.")
    seed: int = Field(0, description="Global seed (TTS sampling, splits).")
    input: InputConfig
    llm: LLMConfig = Field(default_factory=LLMConfig)
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    spoken: SpokenConfig = Field(default_factory=SpokenConfig)
    voices: VoicesConfig = Field(default_factory=VoicesConfig)
    tts: TTSConfig = Field(default_factory=TTSConfig)
    asr: ASRConfig = Field(default_factory=ASRConfig)
    speaker: SpeakerConfig = Field(default_factory=SpeakerConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    package: PackageConfig = Field(default_factory=PackageConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v in {".", ".."} or v.startswith("."):
            raise ValueError(f"run name {v!r} must be a plain directory name")
        return v

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe; relative source paths are resolved against the YAML's directory."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key.path=value")
        _set_path(data, key.strip(), yaml.safe_load(value))
    for src in (data.get("input") or {}).get("sources") or []:
        if isinstance(src, dict) and "path" in src and not Path(str(src["path"])).is_absolute():
            src["path"] = str((path.parent / str(src["path"])).resolve())
    return RunConfig.model_validate(data)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    cur = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
