"""synthesize: TTS of every turn in its assigned voice -> FLAC bytes and duration.

Also makes sure each voice used has its reference probe audio (for speaker verification).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from kespeechchat.stage import Resources, Stage, StageOutput, reject


class SynthesizeStage(Stage):
    name = "synthesize"
    version = "1"
    description = "TTS of each turn with its voice recipe; FLAC 16-bit at the backend's rate."
    inputs = ("dialogue_id", "language", "roles", "spoken_texts", "voice_ids")
    outputs = ("audio_flac", "sample_rate_hz", "durations_s", "tts_attempts")
    resources = Resources(cpus=1.0, memory_mb=1500)

    def config_section(self) -> dict[str, Any]:
        from pipelines.voices import library_fingerprint

        return {
            "tts": self.cfg.tts.model_dump(exclude={"num_threads"}),
            "seed": self.cfg.seed,
            "library": library_fingerprint(self.cfg, self.runtime.run_dir),
        }

    def setup(self) -> None:
        from kespeechchat.backends.tts import make_tts
        from pipelines.voices import load_run_library

        self.tts = make_tts(self.cfg.tts)
        self.tts.setup()
        self.voices = {v.voice_id: v for v in load_run_library(self.cfg, self.runtime.run_dir)}

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        from kespeechchat.audio import encode_flac
        from voice_library.refs import ensure_ref

        self.check_inputs(table)
        sr = int(self.tts.sample_rate_hz)
        kept, rejected = [], []
        audio_s = 0.0
        for row in table.to_pylist():
            lang = row["language"]
            flacs, durs = [], []
            try:
                for i, (text, vid) in enumerate(zip(row["spoken_texts"], row["voice_ids"])):
                    recipe = self.voices.get(vid)
                    if recipe is None:
                        raise KeyError(f"voice {vid!r} of turn {i} is not in the run's library")
                    ensure_ref(self.runtime.run_dir, self.tts, recipe, lang, seed=self.cfg.seed)
                    audio = self.tts.synthesize(text, lang, recipe, seed=self.cfg.seed)
                    flacs.append(encode_flac(audio, sr))
                    durs.append(len(audio) / sr)
            except Exception as e:  # one bad row must not sink the shard
                rejected.append(reject(row, "tts_error", f"{type(e).__name__}: {e}"))
                continue
            audio_s += sum(durs)
            kept.append(
                {
                    **row,
                    "audio_flac": flacs,
                    "sample_rate_hz": sr,
                    "durations_s": durs,
                    "tts_attempts": [1] * len(flacs),
                }
            )
        return self.build_output(table, kept, rejected, {"audio_s": audio_s})
