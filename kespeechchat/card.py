"""The dataset card (README.md): YAML front matter the Hub reads, then what a user needs to know."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kespeechchat.config import RunConfig

TASKS = ["automatic-speech-recognition", "text-to-speech", "audio-to-audio"]


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "10M<n<100M"


def _features_yaml(sample_rate_hz: int) -> list[dict[str, Any]]:
    from pipelines.package import UTTERANCE_FIELDS

    out = []
    for name, _, feat in UTTERANCE_FIELDS:
        if feat is None:
            out.append({"name": name, "dtype": {"audio": {"sampling_rate": int(sample_rate_hz)}}})
        else:
            out.append({"name": name, "dtype": feat["dtype"]})
    return out


def front_matter(cfg: RunConfig, summary: dict[str, Any], sample_rate_hz: int) -> dict[str, Any]:
    langs = sorted(summary.get("by_language", {})) or ["zh", "en"]
    return {
        "pretty_name": cfg.package.pretty_name,
        "license": cfg.package.license,
        "language": langs,
        "multilinguality": "multilingual" if len(langs) > 1 else "monolingual",
        "task_categories": TASKS,
        "size_categories": size_category(summary["utterances"]),
        "annotations_creators": ["machine-generated"],
        "language_creators": ["machine-generated"],
        "source_datasets": ["original"],
        "tags": ["synthetic", "speech", "dialogue", "kespeechchat"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {
            "features": _features_yaml(sample_rate_hz),
            "splits": [{"name": "train", "num_examples": summary["utterances"]}],
        },
    }


def write_card(dataset_dir: Path, cfg: RunConfig, summary: dict[str, Any], run_dir: Path) -> Path:
    """Write ``README.md`` into ``dataset_dir``; counts come from the package summary, never estimates."""
    from kespeechchat.report import run_summary

    sr = cfg.tts.sample_rate_hz
    fm = front_matter(cfg, summary, sr)
    runsum = run_summary(run_dir)
    lines = [
        "---",
        yaml.safe_dump(fm, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {cfg.package.pretty_name}",
        "",
        "Synthetic Chinese/English spoken dialogues made by kespeechchat: text dialogues rewritten for speech by an",
        "LLM, filtered, spoken by a TTS model in virtual voices, and verified by ASR and a speaker encoder.",
        "",
        "## Summary",
        "",
        "| language | dialogues | utterances | hours | mean error rate |",
        "|---|---|---|---|---|",
    ]
    for lang, d in sorted(summary["by_language"].items()):
        lines.append(
            f"| {lang} | {d['dialogues']} | {d['utterances']} | {d['audio_s'] / 3600:.4f} | "
            f"{d['error_kind'].upper()} {d['mean_error_rate']:.3f} |"
        )
    lines.append(
        f"| all | {summary['dialogues']} | {summary['utterances']} | {summary['audio_hours']:.4f} | |"
    )
    n_voices = len(summary.get("voice_usage", {}))
    identities = _distinct_identities(run_dir, set(summary.get("voice_usage", {})))
    lines += [
        "",
        f"Voices used: {n_voices} voice recipes from {identities} distinct identities. Voices sharing an identity",
        "differ only in prosody (speed, pitch, formants) and are not counted as different speakers.",
        "",
        "## How it was made",
        "",
        f"- LLM: {cfg.llm.backend} ({_llm_name(cfg)}); rewrite mode {cfg.rewrite.mode}, judge {'on' if cfg.filter.llm_judge else 'off'}, spoken mode {cfg.spoken.mode}",
        f"- TTS: {cfg.tts.backend}; ASR: {cfg.asr.backend}; speaker encoder: {cfg.speaker.backend}",
        f"- Selection: CER (zh) <= {cfg.select.max_cer_zh}, WER (en) <= {cfg.select.max_wer_en}, "
        f"speaker similarity >= {cfg.select.min_speaker_similarity}, silence ratio <= {cfg.select.max_silence_ratio}",
        f"- Dialogues in: {runsum.get('dialogues_in', 0)}; accepted: {summary['dialogues']}",
    ]
    rej = runsum.get("rejected_by_reason", {})
    if rej:
        lines.append("- Rejected by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(rej.items(), key=lambda kv: -kv[1])))
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- For training and evaluating speech language models, ASR and TTS. All voices are synthetic and belong to no",
        "  real person; they are not a sample of human speakers and carry the TTS model's artefacts.",
        "- Texts derive from the source instruction datasets; their licences apply (see `source_file`).",
        "  The model licences of the LLM, TTS and ASR used apply to the outputs as their authors state.",
        "- Automatic checks (ASR error rate, speaker similarity) bound but do not remove errors: nobody listened to",
        "  every utterance.",
        "",
    ]
    path = Path(dataset_dir) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _distinct_identities(run_dir: Path, voice_ids: set[str]) -> int:
    from pipelines.voices import library_path

    p = library_path(run_dir)
    if not p.exists() or not voice_ids:
        return 0
    import pyarrow.parquet as pq

    t = pq.read_table(p, columns=["voice_id", "identity_id"]).to_pylist()
    return len({r["identity_id"] for r in t if r["voice_id"] in voice_ids})


def _llm_name(cfg: RunConfig) -> str:
    if cfg.llm.backend == "llamacpp":
        return Path(cfg.llm.model_path).name if cfg.llm.model_path else "embedded Qwen2.5-Coder-1.5B-Instruct Q4_K_M"
    return cfg.llm.model
