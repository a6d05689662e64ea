"""verify: scores only (ASR error rate, speaker similarity, audio sanity); select decides.

Score first, decide later: changing a threshold never re-runs these models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from kespeechchat.stage import Resources, Stage, StageOutput, reject

ASR_RATE_HZ = 16000


class VerifyStage(Stage):
    name = "verify"
    version = "1"
    description = "ASR (WER/CER vs the spoken text), speaker similarity vs the voice reference, audio sanity."
    inputs = ("dialogue_id", "language", "spoken_texts", "voice_ids", "audio_flac", "sample_rate_hz")
    outputs = (
        "asr_texts",
        "error_rates",
        "speaker_similarities",
        "silence_ratios",
        "clipping_ratios",
        "chars_per_s",
    )
    resources = Resources(cpus=1.0, memory_mb=2000)

    def config_section(self) -> dict[str, Any]:
        return {
            "asr": self.cfg.asr.model_dump(exclude={"num_threads"}),
            "speaker": self.cfg.speaker.model_dump(),
            "metrics": "v1",
        }

    def setup(self) -> None:
        from kespeechchat.backends.asr import make_asr
        from kespeechchat.backends.speaker import make_speaker

        self.asr = make_asr(self.cfg.asr)
        self.asr.setup()
        self.speaker = make_speaker(self.cfg.speaker)
        self.speaker.setup()
        self._ref_cache: dict[str, np.ndarray] = {}

    def _ref_embedding(self, voice_id: str, language: str) -> np.ndarray:
        from kespeechchat.audio import load_audio
        from voice_library.refs import ref_path

        key = f"{voice_id}-{language}"
        if key not in self._ref_cache:
            path = ref_path(self.runtime.run_dir, voice_id, language)
            if not path.exists():
                raise FileNotFoundError(f"{path}: reference audio of voice {voice_id} missing (rerun synthesize)")
            x, sr = load_audio(path)
            self._ref_cache[key] = self.speaker.embed(x, sr)
        return self._ref_cache[key]

    def process(self, table: pa.Table, shard: int) -> StageOutput:
        from kespeechchat.audio import audio_sanity, decode_audio, resample
        from kespeechchat.backends.speaker import cosine
        from kespeechchat.metrics import error_rate

        self.check_inputs(table)
        rows = table.to_pylist()
        kept, rejected = [], []
        decoded: list[tuple[dict, list[np.ndarray], int]] = []
        for row in rows:
            try:
                clips = []
                for b in row["audio_flac"]:
                    x, sr = decode_audio(b)
                    clips.append(resample(x, sr, ASR_RATE_HZ) if sr != ASR_RATE_HZ else x)
            except Exception as e:
                rejected.append(reject(row, "audio_undecodable", f"{type(e).__name__}: {e}"))
                continue
            decoded.append((row, clips, ASR_RATE_HZ))
        batch = [(x, sr, row["language"]) for row, clips, sr in decoded for x in clips]
        try:
            hyps = self.asr.transcribe(batch) if batch else []
        except Exception as e:
            # The batch failed as a whole: fall back to one clip at a time so only bad rows are lost.
            hyps = []
            for item in batch:
                try:
                    hyps.extend(self.asr.transcribe([item]))
                except Exception as e2:
                    hyps.append(e2)
            if all(isinstance(h, Exception) for h in hyps) and hyps:
                raise RuntimeError(f"ASR failed on every clip of shard {shard}: {e}") from e
        pos = 0
        for row, clips, sr in decoded:
            lang = row["language"]
            my_hyps = hyps[pos : pos + len(clips)]
            pos += len(clips)
            bad = [h for h in my_hyps if isinstance(h, Exception)]
            if bad:
                rejected.append(reject(row, "asr_error", f"{type(bad[0]).__name__}: {bad[0]}"))
                continue
            try:
                ers, sims, sil, clip, cps = [], [], [], [], []
                for x, hyp, text, vid in zip(clips, my_hyps, row["spoken_texts"], row["voice_ids"]):
                    s = audio_sanity(x, sr)
                    ers.append(float(error_rate(text, hyp, lang)))
                    emb = self.speaker.embed(x, sr) if s.finite and s.duration_s > 0.3 else None
                    sims.append(float(cosine(emb, self._ref_embedding(vid, lang))) if emb is not None else -1.0)
                    sil.append(float(s.silence_ratio))
                    clip.append(float(s.clipping_ratio))
                    n_chars = len(text.replace(" ", "")) if lang == "zh" else len(text)
                    cps.append(float(n_chars / s.duration_s) if s.duration_s > 0 else float("inf"))
            except Exception as e:
                rejected.append(reject(row, "verify_error", f"{type(e).__name__}: {e}"))
                continue
            kept.append(
                {
                    **row,
                    "asr_texts": list(my_hyps),
                    "error_rates": ers,
                    "speaker_similarities": sims,
                    "silence_ratios": sil,
                    "clipping_ratios": clip,
                    "chars_per_s": cps,
                }
            )
        return self.build_output(table, kept, rejected)
