"""The dataset card (README.md): YAML front matter the Hub reads, statistics, plots, provenance, limits.

Every number on the card is read back from the Parquet shards, the run's markers and stats, never
estimated, so `kespeechchat card RUN` can rewrite it at any time. The front matter is built with
`huggingface_hub.DatasetCardData` and `datasets`' own `MetadataConfigs`/`DatasetInfosDict`, so it is
the YAML `push_to_hub` would write. Plots are PNGs in `images/` next to the card (matplotlib, Agg).
Needs the `hf` extra (datasets, huggingface_hub, matplotlib).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kespeechchat.backends import registry
from kespeechchat.config import RunConfig
from kespeechchat.store import RunStore, atomic_path, read_json, write_bytes_atomic
from pipelines.package import UTTERANCE_FIELDS, dataset_files, read_utterances
from pipelines.report import run_summary
from pipelines.stages import SHARD_STAGES
from pipelines.voices import library_path

IMAGES_DIR = "images"
TASKS = ["automatic-speech-recognition", "text-to-speech", "audio-to-audio"]
STAT_COLUMNS = [
    "dialogue_id", "turn_index", "num_turns", "role", "language", "duration_s", "error_rate",
    "speaker_similarity", "dnsmos_ovrl", "voice_id", "speaker_id", "gender", "source_file", "source_format",
]  # fmt: skip
ROLE_COLORS = {"user": "#1f77b4", "assistant": "#ff7f0e"}
LANG_COLORS = {"zh": "#d62728", "en": "#2ca02c"}

# What the embedded defaults are and their licences (MODELS.md); other models: see their own cards.
_EMBEDDED = {
    "llm": ("Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF on llama.cpp", "Apache-2.0"),
}


def size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
    ):
        if n < limit:
            return name
    return "1B<n<10B"


# -- reading the dataset ------------------------------------------------------------------------


def split_infos(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    """Rows, uncompressed and file bytes per split, from the Parquet footers (no data read)."""

    out = {}
    first_schema: pa.Schema | None = None
    for split, paths in dataset_files(dataset_dir).items():
        rows = num_bytes = download = 0
        for p in paths:
            pf = pq.ParquetFile(p)
            schema = pf.schema_arrow
            if first_schema is None:
                first_schema = schema
                if not schema.metadata or b"huggingface" not in schema.metadata:
                    raise ValueError(f"{p}: no `huggingface` features in the Parquet metadata")
            elif not schema.equals(first_schema, check_metadata=True):
                raise ValueError(f"{p}: schema differs from {paths[0].name}; the folder mixes two writes")
            md = pf.metadata
            rows += md.num_rows
            num_bytes += sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
            download += p.stat().st_size
        out[split] = {
            "num_examples": rows,
            "num_bytes": num_bytes,
            "download_bytes": download,
            "files": len(paths),
        }
    return out


def collect_stats(dataset_dir: Path) -> dict[str, Any]:
    """Counts and distributions the card quotes, from the shards' non-audio columns."""

    t = read_utterances(dataset_dir, columns=STAT_COLUMNS)
    rows = t.to_pydict() if t.num_rows else {c: [] for c in [*STAT_COLUMNS, "split"]}
    n = len(rows["split"])
    dur = np.asarray(rows["duration_s"], dtype=float)
    lang = np.asarray(rows["language"], dtype=object)
    role = np.asarray(rows["role"], dtype=object)
    dialogues = {}
    for d, k, s, lg, src in zip(
        rows["dialogue_id"],
        rows["num_turns"],
        rows["split"],
        rows["language"],
        rows["source_file"],
        strict=True,
    ):
        dialogues[d] = (k, s, lg, src)
    by_lr: dict[str, dict[str, dict[str, float]]] = {}
    for lg in sorted(set(rows["language"])):
        by_lr[lg] = {}
        for r in ("user", "assistant"):
            m = (lang == lg) & (role == r)
            by_lr[lg][r] = {"utterances": int(m.sum()), "hours": float(dur[m].sum() / 3600.0)}
    speakers_by_role = {
        r: sorted({s for s, rr in zip(rows["speaker_id"], rows["role"], strict=True) if rr == r and s})
        for r in ("user", "assistant")
    }
    user_gender = Counter(
        g
        for s, g, rr in {
            (s, g, rr) for s, g, rr in zip(rows["speaker_id"], rows["gender"], rows["role"], strict=True)
        }
        if rr == "user"
    )
    splits: dict[str, dict[str, Any]] = {}
    for split in dataset_files(dataset_dir):
        m = np.asarray(rows["split"], dtype=object) == split
        splits[split] = {
            "dialogues": sum(1 for v in dialogues.values() if v[1] == split),
            "utterances": int(m.sum()),
            "hours": float(dur[m].sum() / 3600.0),
        }
    by_lang = {}
    for lg in sorted(set(rows["language"])):
        m = lang == lg
        dl = [v for v in dialogues.values() if v[2] == lg]
        er = np.asarray(rows["error_rate"], dtype=float)[m]
        sim = np.asarray(rows["speaker_similarity"], dtype=float)[m]
        mos = np.asarray([np.nan if v is None else v for v in rows["dnsmos_ovrl"]], dtype=float)[m]
        mos = mos[np.isfinite(mos)]
        by_lang[lg] = {
            "dialogues": len(dl),
            "utterances": int(m.sum()),
            "hours": float(dur[m].sum() / 3600.0),
            "mean_turns": float(np.mean([v[0] for v in dl])) if dl else 0.0,
            "speakers": len(
                {s for s, lgg in zip(rows["speaker_id"], rows["language"], strict=True) if lgg == lg and s}
            ),
            "error_kind": "CER" if lg == "zh" else "WER",
            "mean_error_rate": float(er.mean()) if er.size else 0.0,
            "p95_error_rate": float(np.percentile(er, 95)) if er.size else 0.0,
            "mean_speaker_similarity": float(sim.mean()) if sim.size else 0.0,
            "mean_dnsmos_ovrl": float(mos.mean()) if mos.size else None,
            "mean_duration_s": float(dur[m].mean()) if m.any() else 0.0,
        }
    by_source: Counter[str] = Counter(v[3] for v in dialogues.values())
    formats = dict(zip(rows["source_file"], rows["source_format"], strict=True))
    return {
        "rows": rows,
        "utterances": n,
        "dialogues": len(dialogues),
        "hours": float(dur.sum() / 3600.0),
        "mean_turns": float(np.mean([v[0] for v in dialogues.values()])) if dialogues else 0.0,
        "speakers": len({s for s in rows["speaker_id"] if s}),
        "speakers_by_role": {r: len(v) for r, v in speakers_by_role.items()},
        "user_speaker_gender": dict(sorted(user_gender.items())),
        "voices": len(set(rows["voice_id"])),
        "by_language": by_lang,
        "by_language_role": by_lr,
        "splits": splits,
        "sources": {
            src: {"dialogues": c, "format": formats.get(src, "")} for src, c in sorted(by_source.items())
        },
    }


# -- front matter -----------------------------------------------------------------------------------


def front_matter_yaml(cfg: RunConfig, dataset_dir: Path, stats: dict[str, Any]) -> str:
    """YAML of the card header, made by the Hub's and `datasets`' own helpers."""
    import datasets
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    files = dataset_files(dataset_dir)
    infos = split_infos(dataset_dir)
    first = next(iter(files.values()))[0]
    features = datasets.Features.from_arrow_schema(pq.read_schema(first))
    langs = sorted(stats["by_language"]) or ["zh", "en"]
    card_data = DatasetCardData(
        pretty_name=cfg.package.pretty_name,
        license=cfg.package.license,
        language=langs,
        multilinguality="multilingual" if len(langs) > 1 else "monolingual",
        task_categories=TASKS,
        size_categories=[size_category(stats["utterances"])],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        tags=["synthetic", "speech", "spoken-dialogue", "tts", "kespeechchat"],
    )
    MetadataConfigs(
        {"default": {"data_files": [{"split": s, "path": f"data/{s}-*"} for s in files]}}
    ).to_dataset_card_data(card_data)
    split_dict = SplitDict()
    for s, info in infos.items():
        split_dict.add(SplitInfo(name=s, num_bytes=info["num_bytes"], num_examples=info["num_examples"]))
    DatasetInfosDict(
        {
            "default": DatasetInfo(
                features=features,
                splits=split_dict,
                download_size=sum(i["download_bytes"] for i in infos.values()),
                dataset_size=sum(i["num_bytes"] for i in infos.values()),
            )
        }
    ).to_dataset_card_data(card_data)
    return card_data.to_yaml()


# -- plots --------------------------------------------------------------------------------------------


def _time_unit(hours: float) -> tuple[float, str]:
    if hours >= 1.0:
        return 1.0, "hours"
    if hours * 60 >= 1.0:
        return 60.0, "minutes"
    return 3600.0, "seconds"


def _plot_duration(ax, stats: dict[str, Any], cfg: RunConfig) -> None:
    rows = stats["rows"]
    dur = np.asarray(rows["duration_s"], dtype=float)
    lang = np.asarray(rows["language"], dtype=object)
    bins = np.linspace(0, max(1.0, float(dur.max()) if dur.size else 1.0), 31)
    for lg in sorted(set(rows["language"])):
        ax.hist(
            dur[lang == lg], bins=bins, histtype="step", linewidth=1.6, label=lg, color=LANG_COLORS.get(lg)
        )
    ax.set_xlabel("utterance duration (s)")
    ax.set_ylabel("utterances")
    ax.set_title("Duration of utterances")
    if dur.size:
        ax.legend()


def _plot_hours(ax, stats: dict[str, Any], cfg: RunConfig) -> None:
    scale, unit = _time_unit(stats["hours"])
    langs = sorted(stats["by_language_role"])
    bottom = np.zeros(len(langs))
    for r in ("user", "assistant"):
        vals = np.array([stats["by_language_role"][lg][r]["hours"] * scale for lg in langs])
        ax.bar(langs, vals, bottom=bottom, label=r, color=ROLE_COLORS[r])
        bottom += vals
    ax.set_ylabel(unit)
    ax.set_title(f"Audio per language and role ({unit})")
    if langs:
        ax.legend()


def _plot_error(ax, stats: dict[str, Any], cfg: RunConfig) -> None:
    rows = stats["rows"]
    er = np.asarray(rows["error_rate"], dtype=float)
    lang = np.asarray(rows["language"], dtype=object)
    top = max(cfg.select.max_cer_zh, cfg.select.max_wer_en, float(er.max()) if er.size else 0.0, 0.05)
    bins = np.linspace(0, top * 1.05, 26)
    for lg in sorted(set(rows["language"])):
        kind = "CER" if lg == "zh" else "WER"
        ax.hist(
            er[lang == lg],
            bins=bins,
            histtype="step",
            linewidth=1.6,
            label=f"{lg} {kind}",
            color=LANG_COLORS.get(lg),
        )
        limit = cfg.select.max_cer_zh if lg == "zh" else cfg.select.max_wer_en
        ax.axvline(limit, linestyle="--", color=LANG_COLORS.get(lg, "k"), linewidth=1)
    ax.set_xlabel("ASR error rate (dashed: acceptance limit)")
    ax.set_ylabel("utterances")
    ax.set_title("CER (zh) / WER (en) of accepted utterances")
    if er.size:
        ax.legend()


def _plot_similarity(ax, stats: dict[str, Any], cfg: RunConfig) -> None:
    rows = stats["rows"]
    sim = np.asarray(rows["speaker_similarity"], dtype=float)
    role = np.asarray(rows["role"], dtype=object)
    lo = min(cfg.select.min_speaker_similarity, float(sim.min()) if sim.size else 0.5)
    bins = np.linspace(max(-1.0, lo - 0.05), 1.0, 26)
    for r in ("user", "assistant"):
        ax.hist(sim[role == r], bins=bins, histtype="step", linewidth=1.6, label=r, color=ROLE_COLORS[r])
    ax.axvline(cfg.select.min_speaker_similarity, linestyle="--", color="k", linewidth=1)
    ax.set_xlabel("cosine to the voice's reference (dashed: limit)")
    ax.set_ylabel("utterances")
    ax.set_title("Speaker similarity")
    if sim.size:
        ax.legend()


def _plot_voices(ax, stats: dict[str, Any], cfg: RunConfig) -> None:
    rows = stats["rows"]
    usage = Counter(zip(rows["voice_id"], rows["role"], strict=True))
    items = sorted(usage.items(), key=lambda kv: -kv[1])
    x = np.arange(len(items))
    ax.bar(x, [c for _, c in items], color=[ROLE_COLORS.get(r, "grey") for (_, r), _ in items], width=0.9)
    from matplotlib.patches import Patch

    ax.set_xlabel(
        f"voice, most used first ({stats['voices']} voices, {stats['speakers']} speaker identities)"
    )
    ax.set_ylabel("utterances")
    ax.set_xticks([])
    ax.set_title("Voice usage")
    if items:
        ax.legend(handles=[Patch(color=ROLE_COLORS[r], label=f"{r} voices") for r in ("user", "assistant")])


def _plot_turns(ax, stats: dict[str, Any], cfg: RunConfig) -> None:
    rows = stats["rows"]
    turns = Counter(
        n for d, n in {(d, n) for d, n in zip(rows["dialogue_id"], rows["num_turns"], strict=True)}
    )
    ks = sorted(turns)
    ax.bar([str(k) for k in ks], [turns[k] for k in ks], color="#7f7f7f")
    ax.set_xlabel("turns per dialogue")
    ax.set_ylabel("dialogues")
    ax.set_title("Dialogue length")


PLOTS = {
    "duration": ("Utterance durations", _plot_duration),
    "hours_by_language": ("Audio per language and role", _plot_hours),
    "error_rate": ("CER/WER distribution", _plot_error),
    "speaker_similarity": ("Speaker-similarity distribution", _plot_similarity),
    "voice_usage": ("Voice usage", _plot_voices),
    "turns": ("Turns per dialogue", _plot_turns),
}


def _integer_counts(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _readable(path: Path) -> None:
    """Atomic writes come out 0600 (mkstemp); files meant for publishing are world-readable like the shards."""
    import os

    os.chmod(path, 0o644)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _readable(path)


def make_plots(stats: dict[str, Any], cfg: RunConfig, images_dir: Path) -> dict[str, str]:
    """One PNG per plot plus `overview.png` with all of them; returns name -> path relative to the card."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    out = {}
    for name, (_, fn) in PLOTS.items():
        fig = Figure(figsize=(6.0, 3.6))
        ax = fig.add_subplot(1, 1, 1)
        fn(ax, stats, cfg)
        if name != "hours_by_language":
            _integer_counts(ax)
        _save(fig, images_dir / f"{name}.png")
        out[name] = f"{IMAGES_DIR}/{name}.png"
    fig = Figure(figsize=(18.0, 7.6))
    for i, (name, (_, fn)) in enumerate(PLOTS.items()):
        ax = fig.add_subplot(2, 3, i + 1)
        fn(ax, stats, cfg)
        if name != "hours_by_language":
            _integer_counts(ax)
    fig.suptitle(
        f"{cfg.package.pretty_name}: {stats['dialogues']} dialogues, {stats['utterances']} utterances"
    )
    fig.tight_layout()
    _save(fig, images_dir / "overview.png")
    out["overview"] = f"{IMAGES_DIR}/overview.png"
    return out


# -- body -------------------------------------------------------------------------------------------


def _h(hours: float) -> str:
    return f"{hours:.2f}" if hours >= 10 else f"{hours:.4f}"


def _backend_rows(cfg: RunConfig) -> list[tuple[str, str, str]]:
    """The TTS, ASR and speaker encoder as their registered adapters describe them: an embedded
    model by name and licence, a model the user brings by its directory."""
    rows = []
    for role, kind, section in (
        ("TTS", "tts", cfg.tts),
        ("ASR (verification)", "asr", cfg.asr),
        ("speaker encoder (verification)", "speaker", cfg.speaker),
    ):
        b = registry.get(kind, section.backend)
        model_dir = getattr(section, "model_dir", None)
        if b.embedded and not model_dir:
            rows.append((role, b.model, b.licence))
            continue
        name = f"{section.backend} ({Path(model_dir).name if model_dir else 'default'})"
        en_dir = getattr(section, "en_model_dir", None)
        if en_dir:
            name += f" + Whisper {Path(en_dir).name} for en"
        rows.append((role, name, "see the model's card"))
    return rows


def _models(cfg: RunConfig) -> list[tuple[str, str, str]]:
    """(role, model, licence) rows; embedded defaults are named, other models point to their cards."""
    uses_llm = cfg.rewrite.mode == "llm" or cfg.filter.llm_judge or cfg.spoken.mode == "llm"
    rows = []
    if not uses_llm:
        rows.append(
            ("LLM (rewrite, judge, spoken style)", "not used (text kept as in the source, rules only)", "-")
        )
    elif cfg.llm.backend == "llamacpp" and not cfg.llm.model_path:
        rows.append(("LLM (rewrite, judge, spoken style)", *_EMBEDDED["llm"]))
    elif cfg.llm.backend == "llamacpp":
        rows.append(
            (
                "LLM (rewrite, judge, spoken style)",
                f"{Path(cfg.llm.model_path or '').name} on llama.cpp",
                "see the model's card",
            )
        )
    else:
        rows.append(
            (
                "LLM (rewrite, judge, spoken style)",
                f"{cfg.llm.model} (OpenAI-compatible server, e.g. vLLM)",
                "see the model's card",
            )
        )
    rows += _backend_rows(cfg)
    rows.append(("text normalisation", "WeTextProcessing (zh/en TN grammars)", "Apache-2.0"))
    quality = getattr(cfg, "quality", None)
    if quality is not None and quality.backend != "none":
        q = registry.get("quality", quality.backend)
        rows.append(("quality score (verification)", q.model or quality.backend, q.licence or "see its card"))
    return rows


def _short_turn_bound(sel: Any) -> str:
    """The looser speaker bound of short turns, when the config has one (short clips embed noisily)."""
    short = getattr(sel, "min_speaker_similarity_short", None)
    below = getattr(sel, "speaker_short_s", None)
    if short is None or below is None or short >= sel.min_speaker_similarity:
        return ""
    return f" (≥ {short} for turns under {below:g} s)"


def _flow_lines(cfg: RunConfig) -> list[str]:
    """The stages as they ran, from the stage classes' own descriptions, with what this config switched off."""

    retries = getattr(getattr(cfg, "retry", None), "retries", None)
    notes = {
        "rewrite": None
        if cfg.rewrite.mode == "llm"
        else "not used here: `rewrite.mode: passthrough` keeps the source text",
        "filter": None if cfg.filter.llm_judge else "rules only here (`filter.llm_judge: false`)",
        "spoken": None if cfg.spoken.mode == "llm" else "normalisation only here (`spoken.mode: rules`)",
        "repair": None
        if retries is None
        else (f"here up to {retries} re-syntheses per turn" if retries else "off here"),
    }
    out = ["1. **ingest**: source text dialogues (Alpaca, ShareGPT, OpenAI messages) normalised, language identified, "
           "content-hash ids, deterministic sample."]  # fmt: skip
    for i, st in enumerate(SHARD_STAGES, start=2):
        note = notes.get(st.name)
        out.append(f"{i}. **{st.name}**: {st.description.rstrip('.')}" + (f" ({note})" if note else "") + ".")
    out.append(
        f"{len(SHARD_STAGES) + 2}. **package**: the accepted dialogues, one row per utterance, in these Parquet shards."
    )
    return out


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def render_body(
    cfg: RunConfig,
    stats: dict[str, Any],
    plots: dict[str, str],
    run_summary: dict[str, Any],
    package_summary: dict[str, Any] | None,
    repo_id: str | None,
    voices_note: str | None = None,
) -> str:
    """The card's Markdown body, section by section."""
    sections = (
        _intro_section(cfg),
        _summary_section(cfg, stats, package_summary, voices_note),
        _plots_section(plots),
        _fields_and_loading_section(stats, repo_id),
        _how_it_was_made_section(cfg, run_summary, package_summary),
        _sources_and_limits_section(cfg, stats, plots),
    )
    return "\n".join(line for section in sections for line in section)


def _intro_section(cfg: RunConfig) -> list[str]:
    return [
        f"# {cfg.package.pretty_name}",
        "",
        "Synthetic Chinese and English spoken dialogues made with kespeechchat, the way Ke-SpeechChat was made: text",
        "dialogues are rewritten for speech by an LLM, filtered, turned into spoken style, spoken by a TTS model in",
        "virtual voices, and every utterance is checked by ASR (CER/WER) and a speaker encoder. One row is one",
        "utterance; `dialogue_id` and `turn_index` rebuild the dialogues.",
        "",
        "## Summary",
        "",
    ]


def _summary_section(
    cfg: RunConfig, stats: dict[str, Any], package_summary: dict[str, Any] | None, voices_note: str | None
) -> list[str]:
    lines: list[str] = []
    rows = []
    for lg, d in stats["by_language"].items():
        mos = "-" if d["mean_dnsmos_ovrl"] is None else f"{d['mean_dnsmos_ovrl']:.2f}"
        rows.append([lg, d["dialogues"], d["utterances"], _h(d["hours"]), f"{d['mean_turns']:.2f}", d["speakers"],
                     f"{d['error_kind']} {d['mean_error_rate']:.3f}", f"{d['mean_speaker_similarity']:.3f}", mos])  # fmt: skip
    rows.append(["**all**", stats["dialogues"], stats["utterances"], _h(stats["hours"]), f"{stats['mean_turns']:.2f}",
                 stats["speakers"], "", "", ""])  # fmt: skip
    lines += _table(
        ["language", "dialogues", "utterances", "hours", "mean turns", "speakers", "mean error rate",
         "mean speaker sim.", "mean DNSMOS OVRL"], rows,
    )  # fmt: skip
    lines += ["", "Hours (and utterances) per language and role:", ""]
    lines += _table(
        ["language", "user", "assistant"],
        [
            [lg, *(f"{_h(v[r]['hours'])} h ({v[r]['utterances']})" for r in ("user", "assistant"))]
            for lg, v in stats["by_language_role"].items()
        ],
    )
    lines += ["", "Splits (by dialogue; a dialogue's turns are never split):", ""]
    lines += _table(
        ["split", "dialogues", "utterances", "hours"],
        [[s, d["dialogues"], d["utterances"], _h(d["hours"])] for s, d in stats["splits"].items()],
    )
    shares = ", ".join(f"{k} {v:g}" for k, v in cfg.package.splits.items())
    empty = (package_summary or {}).get("empty_splits") or []
    lines += [
        "",
        f"Split shares requested: {shares} (assignment by a hash of seed and dialogue id)."
        + (f" No dialogue fell into {', '.join(empty)}, so it is left out." if empty else ""),
        "",
        f"**Speakers.** {stats['speakers']} distinct speaker identities (user turns: {stats['speakers_by_role']['user']}, "
        f"assistant turns: {stats['speakers_by_role']['assistant']}) speak through {stats['voices']} voice recipes. "
        "Voices that share an identity differ only in prosody (speed, pitch) and are counted as one speaker "
        "(`speaker_id`); they are not different people. "
        + (
            "User speakers by gender label: "
            + ", ".join(f"{g} {c}" for g, c in stats["user_speaker_gender"].items())
            + "."
            if stats["user_speaker_gender"]
            else ""
        ),
        *([f"The voice library of the run: {voices_note}", ""] if voices_note else [""]),
    ]
    return lines


def _plots_section(plots: dict[str, str]) -> list[str]:
    lines = ["## Plots", ""]
    for name, (title, _) in PLOTS.items():
        if name in plots:
            lines += [f"![{title}]({plots[name]})", ""]
    return lines


def _fields_and_loading_section(stats: dict[str, Any], repo_id: str | None) -> list[str]:
    lines: list[str] = []
    lines += ["## Fields", ""]
    lines += _table(
        ["column", "meaning"],
        [[f"`{n}`", desc] for n, _, _, desc in UTTERANCE_FIELDS]
        + [["(split)", "the file's split: `data/<split>-*.parquet`"]],
    )
    where = repo_id or "path/to/this/folder"
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import Audio, load_dataset",
        "",
        f'ds = load_dataset("{where}", split="{next(iter(stats["splits"]), "train")}")',
        'print(ds[0]["audio"]["array"].shape, ds[0]["text"])      # decoding needs torchcodec and FFmpeg',
        f'stream = load_dataset("{where}", split="{next(iter(stats["splits"]), "train")}", streaming=True)',
        "",
        "# without torchcodec: keep the FLAC bytes and decode them with soundfile",
        "import io, soundfile as sf",
        'raw = ds.cast_column("audio", Audio(decode=False))',
        'samples, sample_rate = sf.read(io.BytesIO(raw[0]["audio"]["bytes"]))',
        "",
        "# a whole dialogue: its rows sorted by turn_index",
        'dialogue = sorted(ds.filter(lambda r: r["dialogue_id"] == ds[0]["dialogue_id"]), key=lambda r: r["turn_index"])',
        "```",
        "",
    ]
    return lines


def _how_it_was_made_section(
    cfg: RunConfig, run_summary: dict[str, Any], package_summary: dict[str, Any] | None
) -> list[str]:
    sel = cfg.select
    lines = [
        "## How it was made",
        "",
        *_flow_lines(cfg),
        "",
    ]
    lines += _table(["role", "model", "licence"], [list(r) for r in _models(cfg)])
    prompts = (package_summary or {}).get("prompts")
    lines += ["", "Prompt files (`configs/prompts`, version = hash of the file): "
              + ("; ".join(f"{task}: " + (", ".join(f"{lg} `{v}`" for lg, v in vers.items()) if isinstance(vers, dict) else str(vers))
                           for task, vers in prompts.items()) if prompts else
                 ("not used" if prompts == {} else "not recorded")) + "."]  # fmt: skip
    lines += [
        "",
        f"Acceptance thresholds: CER (zh) ≤ {sel.max_cer_zh}, WER (en) ≤ {sel.max_wer_en}, speaker similarity ≥ "
        f"{sel.min_speaker_similarity}{_short_turn_bound(sel)}, silence ratio ≤ {sel.max_silence_ratio}, clipping ratio ≤ {sel.max_clipping_ratio}, "
        f"repeated speech ≤ {sel.max_repeat_ratio}, "
        "speaking rate (characters/s) "
        + ", ".join(
            f"{lg} {sel.min_chars_per_s.get(lg, 0):g}–{sel.max_chars_per_s.get(lg, float('inf')):g}"
            for lg in sorted(set(sel.min_chars_per_s) | set(sel.max_chars_per_s))
        )  # fmt: skip
        + (f", DNSMOS OVRL ≥ {sel.min_dnsmos_ovrl}" if sel.min_dnsmos_ovrl is not None else "")
        + ". Text and transcript are compared after the same normalisation (script, numbers, case, "
        "punctuation); a Chinese character counts as right when it is the same character or reads the same "
        "with the same tone (汇总 heard as 绘总: the recogniser had to pick one way to write huì zǒng), "
        "and a wrong tone counts as an error.",
        "",
        "Where every source dialogue went (rows per stage; in = out + rejected):",
        "",
    ]
    st_rows = [
        [s["stage"], s["rows_in"], s["rows_out"], s["rows_rejected"]]
        for s in run_summary.get("stages", [])
        if s["stage"] != "package"  # its numbers are the summary above (utterances, not dialogues)
    ]
    lines += _table(["stage", "in", "out", "rejected"], st_rows)
    rej = run_summary.get("rejected_by_reason", {})
    lines += [""]
    if rej:
        lines += ["Rejected by reason (stage:reason):", ""]
        lines += _table(
            ["reason", "dialogues"],
            [[f"`{k}`", v] for k, v in sorted(rej.items(), key=lambda kv: (-kv[1], kv[0]))],
        )
    else:
        lines += ["No dialogue was rejected."]
    if run_summary.get("not_sampled"):
        lines += [
            "",
            f"Source records not sampled (outside the configured `limit`): {run_summary['not_sampled']}.",
        ]
    return lines


def _sources_and_limits_section(cfg: RunConfig, stats: dict[str, Any], plots: dict[str, str]) -> list[str]:
    lines: list[str] = []
    lic = cfg.package.source_licenses
    lines += ["", "## Sources", ""]
    lines += _table(
        ["source file", "format", "dialogues here", "licence"],
        [
            [f"`{src}`", d["format"], d["dialogues"], lic.get(src, "not declared")]
            for src, d in stats["sources"].items()
        ],
    )
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- Made for training and evaluating spoken-dialogue models, ASR and TTS. It is synthetic: every voice is a",
        "  virtual voice made from the TTS model's voices and belongs to no real person; the voices are not a sample",
        "  of human speakers (accents, ages, recording conditions) and carry the TTS model's artefacts.",
        "- Speakers are counted as identities (`speaker_id`), not voice recipes: prosodic variants of one identity",
        "  are not different people. How far apart the identities are is measured by the voice-library audit",
        "  (speaker encoder), not assumed; a model trained on this data hears few distinct timbres.",
        "- Splits are by dialogue, not by speaker: the same voices (in particular the assistant voices) appear in "
        "every split.",
        "- The checks bound errors but do not remove them: ASR and the speaker encoder make mistakes themselves, and",
        "  nobody listened to every utterance. The LLM rewrite may change meaning or facts of the source answers.",
        "- The texts derive from the source datasets above, whose licences and terms apply; the licences of the",
        "  models above apply to their outputs as their authors state.",
        "",
        "## Licence",
        "",
        f"`{cfg.package.license}` for this compilation, subject to the licences of the sources and models above.",
        "",
        f"All plots in one image: [{IMAGES_DIR}/overview.png]({plots.get('overview', IMAGES_DIR + '/overview.png')}).",
        "",
    ]
    return lines


def _voices_note(run_dir: Path) -> str | None:
    """What the run's voice library says about the distinctness of its identities (if it records it)."""

    p = library_path(run_dir)
    try:
        from voice_library.recipes import distinctness_statement, library_meta
    except ImportError:  # a voice library without recorded distinctness
        return None
    if not p.exists():
        return None
    meta = library_meta(p)
    return distinctness_statement(meta) if meta else None


def write_card(
    dataset_dir: str | Path,
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    package_summary: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write `README.md` and `images/*.png` into ``dataset_dir`` from its shards and the run's records."""

    dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
    if package_summary is None:
        package_summary = read_json(RunStore(run_dir).summary_path("package"))
    stats = collect_stats(dataset_dir)
    yaml_text = front_matter_yaml(cfg, dataset_dir, stats)
    plots = make_plots(stats, cfg, dataset_dir / IMAGES_DIR)
    body = render_body(
        cfg, stats, plots, run_summary(run_dir), package_summary, repo_id, _voices_note(run_dir)
    )
    path = dataset_dir / "README.md"
    write_bytes_atomic(path, f"---\n{yaml_text.strip()}\n---\n\n{body}".encode())
    _readable(path)
    return path
