"""Which voice speaks which dialogue: balanced over the whole dataset, reproducible from the seed.

Every dialogue has a *slot* within its language: how many dialogues of that language come before
it in the run's fixed ingest order (per-shard counts are computed once from the ingest shards and
cached in the run). The user voices of a language form a cycle in a seeded, identity-major order
(all identities once, then their next variants, …), and slot s gets voice ``cycle[s mod n]``:
every voice is used ⌊N/n⌋ or ⌈N/n⌉ times and every identity as evenly as its variant count
allows. Dialogues rejected upstream leave holes, not clumps. Agent voices alternate
female/male by slot.

Within a dialogue one voice speaks all user turns and one agent voice all assistant turns, and
the two never share an identity (agent identities are kept out of the user voices when the
library is built; this is checked here too).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kespeechchat.config import stable_hash
from kespeechchat.store import RunStore, read_json, write_json_atomic


@dataclass(frozen=True)
class Assigner:
    """Deterministic slot -> voice maps per language, built once per worker from the library."""

    user_cycles: dict[str, list[Any]]  # language -> voices in cycle order
    agents: dict[str, list[Any]]  # language -> agent voices (female first)

    @classmethod
    def from_library(
        cls, voices: Iterable[Any], seed: int, languages: Sequence[str] = ("zh", "en")
    ) -> Assigner:
        voices = list(voices)
        users = [v for v in voices if v.role == "user"]
        agents = [v for v in voices if v.role == "agent"]
        agent_ids = {v.identity_id for v in agents}
        overlap = [v.voice_id for v in users if v.identity_id in agent_ids]
        if overlap:
            raise ValueError(f"user voices share an identity with an agent voice: {overlap[:3]}")
        cycles: dict[str, list[Any]] = {}
        agent_map: dict[str, list[Any]] = {}
        for lang in languages:
            pool = [v for v in users if v.language in (lang, "multi")]
            cycles[lang] = _identity_major_cycle(pool, seed, lang)
            agent_map[lang] = sorted(
                (v for v in agents if v.language in (lang, "multi")),
                key=lambda v: (v.gender != "female", v.voice_id),
            )
        return cls(cycles, agent_map)

    def assign(self, slot: int, language: str) -> tuple[Any, Any]:
        """(user voice, agent voice) of the dialogue in ``slot``; KeyError if the language has none."""
        users, agents = self.user_cycles.get(language), self.agents.get(language)
        if not users or not agents:
            raise KeyError(f"library has no user/agent voice for language {language!r}")
        return users[slot % len(users)], agents[slot % len(agents)]


def _identity_major_cycle(voices: Sequence[Any], seed: int, language: str) -> list[Any]:
    """Voices ordered so that consecutive positions walk through all identities (seeded order)
    before any identity comes back; within an identity its variants come in seeded order."""

    by_identity: dict[str, list[Any]] = defaultdict(list)
    for v in sorted(voices, key=lambda v: v.voice_id):
        by_identity[v.identity_id].append(v)
    rng = np.random.default_rng(int(stable_hash([seed, language])[:8], 16))
    ids = sorted(by_identity)
    ident_order = [ids[i] for i in rng.permutation(len(ids))]
    for i in ident_order:
        group = by_identity[i]
        by_identity[i] = [group[k] for k in rng.permutation(len(group))]
    cycle: list[Any] = []
    depth = max((len(g) for g in by_identity.values()), default=0)
    for round_ in range(depth):
        cycle += [by_identity[i][round_] for i in ident_order if round_ < len(by_identity[i])]
    return cycle


def language_offsets(run_dir: str | Path) -> dict[int, dict[str, int]]:
    """shard -> language -> number of dialogues of that language in all earlier ingest shards.

    Read once from the ingest shards' ``language`` column and cached in
    ``voices/language_offsets.json`` under the ingest marker's fingerprints, so a re-ingest
    recomputes it and workers agree.
    """
    import pyarrow.parquet as pq

    store = RunStore(run_dir)
    marker = store.read_marker("ingest", None)
    if not marker:
        raise FileNotFoundError(f"{run_dir}: ingest has not run")
    fps = marker["shard_fingerprints"]
    key = stable_hash(fps)
    cache = RunStore(run_dir).voices_dir / "language_offsets.json"
    cached = read_json(cache)
    if cached and cached.get("ingest") == key:
        return {int(k): v for k, v in cached["offsets"].items()}
    offsets: dict[int, dict[str, int]] = {}
    running: Counter[str] = Counter()
    for shard in sorted(int(k) for k in fps):
        offsets[shard] = dict(running)
        langs = (
            pq.read_table(store.data_path("ingest", shard), columns=["language"])
            .column("language")
            .to_pylist()
        )
        running.update(langs)
    write_json_atomic(cache, {"ingest": key, "offsets": {str(k): v for k, v in offsets.items()}})
    return offsets


def usage_histogram(voice_ids: Iterable[str], voices: Iterable[Any]) -> dict[str, Any]:
    """How evenly voices (and identities) were used: counts and their distribution.

    ``voice_ids`` are the user voices of the dialogues (one per dialogue).
    """
    lib = {v.voice_id: v for v in voices}
    counts = Counter(voice_ids)
    unknown = [v for v in counts if v not in lib]
    if unknown:
        raise ValueError(f"voices not in the library: {unknown[:3]}")
    users = [v for v in lib.values() if v.role == "user"]
    per_identity = Counter()
    for vid, n in counts.items():
        per_identity[lib[vid].identity_id] += n
    used = np.asarray(list(counts.values()) or [0])
    ident_used = np.asarray(list(per_identity.values()) or [0])
    hist = Counter(counts.get(v.voice_id, 0) for v in users)
    return {
        "dialogues": int(sum(counts.values())),
        "library_user_voices": len(users),
        "voices_used": len(counts),
        "identities_used": len(per_identity),
        "uses_per_voice": {"min": int(used.min()), "max": int(used.max()), "mean": float(used.mean())},
        "uses_per_identity": {
            "min": int(ident_used.min()),
            "max": int(ident_used.max()),
            "mean": float(ident_used.mean()),
        },
        "voices_by_use_count": {str(k): hist[k] for k in sorted(hist)},  # k uses -> how many voices
        "by_gender": dict(Counter(lib[v].gender for v in counts.elements())),
    }


def format_usage(u: Mapping[str, Any]) -> str:
    lines = [
        f"dialogues: {u['dialogues']}; user voices used: {u['voices_used']} of {u['library_user_voices']}; "
        f"identities used: {u['identities_used']}",
        f"uses per voice: min {u['uses_per_voice']['min']}, max {u['uses_per_voice']['max']}, "
        f"mean {u['uses_per_voice']['mean']:.2f}",
        f"uses per identity: min {u['uses_per_identity']['min']}, max {u['uses_per_identity']['max']}, "
        f"mean {u['uses_per_identity']['mean']:.2f}",
        "voices by number of uses: " + ", ".join(f"{k}×: {n}" for k, n in u["voices_by_use_count"].items()),
        "user dialogues by gender: " + ", ".join(f"{g} {n}" for g, n in sorted(u["by_gender"].items())),
    ]
    return "\n".join(lines)
