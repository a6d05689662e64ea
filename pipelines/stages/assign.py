"""assign: a voice per speaker of each dialogue, reproducible from the seed.

User turns draw from the virtual library; assistant turns use the fixed agent voices of the
dialogue's language. One voice per speaker within a dialogue.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

from kespeechchat.stage import Resources, Stage, StageOutput, reject


def _draw(seed: int, key: str, n: int) -> int:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") % n


class AssignStage(Stage):
    name = "assign"
    version = "1"
    description = "Voice per speaker: user turns from the virtual library, assistant turns from agent voices."
    inputs = ("dialogue_id", "language", "roles", "spoken_texts")
    outputs = ("voice_ids",)
    resources = Resources(cpus=0.25, memory_mb=300)

    def config_section(self) -> dict[str, Any]:
        from pipelines.voices import library_fingerprint

        return {"voices": self.cfg.voices.model_dump(), "library": library_fingerprint(self.cfg, self.runtime.run_dir)}

    def setup(self) -> None:
        from pipelines.voices import load_run_library

        voices = load_run_library(self.cfg, self.runtime.run_dir)
        self.users = sorted((v for v in voices if v.role == "user"), key=lambda v: v.voice_id)
        self.agents = sorted((v for v in voices if v.role == "agent"), key=lambda v: v.voice_id)

    def _candidates(self, pool: list, language: str) -> list:
        return [v for v in pool if v.language in (language, "multi")]

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        self.check_inputs(table)
        seed = self.cfg.voices.seed
        kept, rejected = [], []
        for row in table.to_pylist():
            lang = row["language"]
            users, agents = self._candidates(self.users, lang), self._candidates(self.agents, lang)
            if not users or not agents:
                rejected.append(reject(row, "no_voice", f"library has no user/agent voice for language {lang!r}"))
                continue
            user = users[_draw(seed, "user:" + row["dialogue_id"], len(users))]
            agent = agents[_draw(seed, "agent:" + row["dialogue_id"], len(agents))]
            ids = [user.voice_id if role == "user" else agent.voice_id for role in row["roles"]]
            kept.append({**row, "voice_ids": ids})
        return self.build_output(table, kept, rejected)
