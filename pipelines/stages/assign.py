"""assign: a voice per speaker of each dialogue, balanced over the dataset, reproducible from the seed.

User turns get a user voice of the library and assistant turns an agent voice of the dialogue's
language; one voice per speaker within a dialogue. Which voice is decided by the dialogue's slot
(its rank among dialogues of its language in the fixed ingest order), see
``voice_library.assignment``: balanced use without any shard knowing what the others did.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

from kespeechchat.stage import Resources, Stage, StageOutput, reject
from kespeechchat.store import RunStore
from pipelines.voices import library_fingerprint, load_run_library
from voice_library.assignment import Assigner, language_offsets


class AssignStage(Stage):
    name = "assign"
    version = "2"
    description = "Voice per speaker: user turns from the virtual library (balanced), assistant turns from agent voices."
    inputs = ("dialogue_id", "language", "roles", "spoken_texts")
    outputs = ("voice_ids",)
    resources = Resources(cpus=0.1, memory_mb=500)

    def config_section(self) -> dict[str, Any]:

        return {
            "voices": self.cfg.voices.model_dump(),
            "library": library_fingerprint(self.cfg, self.runtime.run_dir),
            "shard_size": self.cfg.input.shard_size,
        }

    def setup(self) -> None:

        voices = load_run_library(self.cfg, self.runtime.run_dir)
        self.assigner = Assigner.from_library(voices, self.cfg.voices.seed)

    def _slots(self, shard: int) -> dict[str, int]:
        """dialogue_id -> its slot: rank among same-language dialogues in the ingest order."""
        import pyarrow.parquet as pq

        offsets = language_offsets(self.runtime.run_dir).get(shard, {})
        path = RunStore(self.runtime.run_dir).data_path("ingest", shard)
        rows = pq.read_table(path, columns=["dialogue_id", "language"])
        seen: Counter[str] = Counter()
        slots = {}
        for r in rows.to_pylist():
            lang = r["language"]
            slots[r["dialogue_id"]] = offsets.get(lang, 0) + seen[lang]
            seen[lang] += 1
        return slots

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        self.check_inputs(table)
        slots = self._slots(shard)
        kept, rejected = [], []
        for row in table.to_pylist():
            lang = row["language"]
            slot = slots.get(row["dialogue_id"])
            if slot is None:
                raise ValueError(
                    f"assign shard {shard}: dialogue {row['dialogue_id']} is not in the ingest shard"
                )
            try:
                user, agent = self.assigner.assign(slot, lang)
            except KeyError as e:
                rejected.append(reject(row, "no_voice", str(e).strip("'\"")))
                continue
            ids = [user.voice_id if role == "user" else agent.voice_id for role in row["roles"]]
            kept.append({**row, "voice_ids": ids})
        users = Counter(
            vid for r in kept for vid, role in zip(r["voice_ids"], r["roles"], strict=True) if role == "user"
        )
        metrics = {
            "user_voices_used": float(len(users)),
            "max_uses_of_a_voice": float(max(users.values(), default=0)),
        }
        return self.build_output(table, kept, rejected, metrics)
