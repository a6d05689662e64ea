"""Library statistics: balance across language × gender × age band, prosody, identities vs voices.

Speakers are identities, never recipes: every count of "speakers" here is a count of distinct
``identity_id``s, and the distinctness bound recorded in the library file is printed with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kespeechchat.store import atomic_path
from kespeechchat.voice import AGE_BANDS, GENDERS
from voice_library.recipes import distinctness_statement


def _summary(x: Sequence[float]) -> dict[str, float]:
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        return {}
    q = np.percentile(a, [0, 5, 50, 95, 100])
    return {
        "mean": round(float(a.mean()), 4),
        **{k: round(float(v), 4) for k, v in zip(("min", "p5", "median", "p95", "max"), q, strict=True)},
    }


def library_stats(voices: Sequence[Any], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Counts and distributions of a library (user and agent voices)."""

    users = [v for v in voices if v.role == "user"]
    agents = [v for v in voices if v.role == "agent"]
    by_lga = Counter((v.language, v.gender, v.age_band) for v in users)
    first: dict[str, Any] = {}
    for v in users:
        first.setdefault(v.identity_id, v)
    ident_ga = Counter((v.gender, v.age_band) for v in first.values())
    variants = Counter(v.identity_id for v in users)
    families = Counter()
    for v in first.values():
        fam = "affine"
        if v.prosody_weights:
            fam = "split"
        if v.style_offsets:
            fam += "+lendir"
        if v.speaker_embedding is not None:
            fam = "embedding"
        families[fam] += 1
    m = dict(meta or {})
    m.setdefault("voices", len(voices))
    m.setdefault("identities", len({v.identity_id for v in voices}))
    return {
        "voices": len(voices),
        "user_voices": len(users),
        "agent_voices": len(agents),
        "identities": len({v.identity_id for v in voices}),
        "user_identities": len(first),
        "distinct": m.get("distinct"),
        "statement": distinctness_statement(m),
        "voices_by_language_gender_age": {f"{lang}/{g}/{a}": n for (lang, g, a), n in sorted(by_lga.items())},
        "voices_by_language": dict(Counter(v.language for v in users)),
        "voices_by_gender": dict(Counter(v.gender for v in users)),
        "identities_by_gender_age": {f"{g}/{a}": n for (g, a), n in sorted(ident_ga.items())},
        "identities_by_gender": dict(Counter(v.gender for v in first.values())),
        # an identity speaks only the languages it was measured clear in
        "identities_by_language": {
            lang: len({v.identity_id for v in users if v.language == lang})
            for lang in sorted({v.language for v in users})
        },
        "identity_families": dict(families),
        "variants_per_identity": _summary(list(variants.values())),
        "speed": _summary([v.speed for v in users]),
        "pitch_ratio": _summary([v.pitch_ratio for v in users]),
        "formant_ratio": _summary([v.formant_ratio for v in users]),
        "agents": [
            {"voice_id": v.voice_id, "identity_id": v.identity_id, "language": v.language, "gender": v.gender}
            for v in agents
        ],
    }


def format_stats(s: Mapping[str, Any]) -> str:
    lines = [
        s["statement"],
        f"user voices {s['user_voices']} ({s['user_identities']} identities), agent voices {s['agent_voices']}",
        f"identities by gender: {s['identities_by_gender']}; by family: {s['identity_families']}",
        "identities serving each language: "
        + ", ".join(f"{k} {v}" for k, v in s.get("identities_by_language", {}).items()),
        "variants per identity: " + ", ".join(f"{k} {v}" for k, v in s["variants_per_identity"].items()),
        "",
        "user voices by language × gender × age band:",
        f"  {'':<12}" + "".join(f"{a:>9}" for a in AGE_BANDS),
    ]
    for lang in sorted(s["voices_by_language"]):
        for g in GENDERS:
            row = [s["voices_by_language_gender_age"].get(f"{lang}/{g}/{a}", 0) for a in AGE_BANDS]
            lines.append(f"  {lang + '/' + g:<12}" + "".join(f"{n:>9}" for n in row))
    lines.append("")
    for k in ("speed", "pitch_ratio", "formant_ratio"):
        lines.append(f"{k:<14}" + ", ".join(f"{a} {b}" for a, b in s[k].items()))
    for a in s["agents"]:
        lines.append(f"agent {a['language']}/{a['gender']}: {a['voice_id']} ({a['identity_id']})")
    return "\n".join(lines)


def plot_stats(voices: Sequence[Any], s: Mapping[str, Any], path: str | Path) -> Path:
    """One PNG: balance bars (voices and identities) and prosody histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [v for v in voices if v.role == "user"]
    fig, ax = plt.subplots(2, 3, figsize=(15, 8))
    keys = list(s["voices_by_language_gender_age"])
    ax[0, 0].bar(range(len(keys)), [s["voices_by_language_gender_age"][k] for k in keys], color="tab:blue")
    ax[0, 0].set_xticks(range(len(keys)), keys, rotation=60, ha="right", fontsize=7)
    ax[0, 0].set_title("user voices: language / gender / age band")
    ik = list(s["identities_by_gender_age"])
    ax[0, 1].bar(range(len(ik)), [s["identities_by_gender_age"][k] for k in ik], color="tab:orange")
    ax[0, 1].set_xticks(range(len(ik)), ik, rotation=45, ha="right", fontsize=8)
    ax[0, 1].set_title(f"distinct identities ({s['user_identities']}): gender / age band")
    per = Counter(v.identity_id for v in users)
    ax[0, 2].hist(list(per.values()), bins=30, color="tab:green")
    ax[0, 2].set_title("variants per identity")
    for a, key in zip(ax[1], ("speed", "pitch_ratio", "formant_ratio"), strict=True):
        a.hist([getattr(v, key) for v in users], bins=40, color="tab:purple")
        a.set_title(key.replace("_", " "))
    d = s.get("distinct") or {}
    fig.suptitle(
        f"{s['user_voices']} user voices from {s['user_identities']} distinct identities"
        + (f" (centroid cosine ≤ {d.get('max_identity_cosine')}, {d.get('encoder')})" if d else "")
    )
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
