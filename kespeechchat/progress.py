"""Progress lines while a run works, and the summary a person reads at the end.

Plain lines (no bars): they read well in a terminal, a CI log and a Ray driver log alike.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def fmt_duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.total_units = 0
        self.done_units = 0
        self.rows_out = 0
        self.audio_s = 0.0
        self.n_shards = 0

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(f"[{fmt_duration(time.perf_counter() - self.t0):>6}] {line}", file=self.stream, flush=True)

    def note(self, line: str) -> None:
        self._say(line)

    def warn(self, line: str) -> None:
        """Something went wrong and was handled: printed even with --quiet."""
        print(
            f"[{fmt_duration(time.perf_counter() - self.t0):>6}] warning: {line}",
            file=self.stream,
            flush=True,
        )

    def start_shards(self, n_shards: int, stages: list[str]) -> None:
        self.n_shards = n_shards
        self.total_units = n_shards * len(stages)
        self.done_units = 0
        self._say(f"{n_shards} shard(s) x {len(stages)} stage(s): {', '.join(stages)}")

    def unit_skipped(self, stage: str, shard: int, marker: dict[str, Any]) -> None:
        self.done_units += 1

    def unit_started(self, stage: str, shard: int) -> None:
        pass

    def unit_done(self, stage: str, shard: int, marker: dict[str, Any]) -> None:
        self.done_units += 1
        audio = float(marker.get("metrics", {}).get("audio_s", 0.0))
        self.audio_s += audio
        dur = float(marker.get("duration_s", 0.0))
        rate = marker["rows_in"] / dur if dur > 0 else 0.0
        extra = f"  audio {audio:.1f}s" if audio else ""
        tok = marker.get("metrics", {}).get("tokens_out")
        if tok:
            extra += f"  {int(tok)} tok out ({tok / dur:.1f} tok/s)" if dur > 0 else ""
        elapsed = time.perf_counter() - self.t0
        eta = ""
        if 0 < self.done_units < self.total_units:
            eta = f"  eta ~{fmt_duration(elapsed / self.done_units * (self.total_units - self.done_units))}"
        self._say(
            f"[{stage}] shard {shard + 1}/{self.n_shards}: {marker['rows_in']} in, {marker['rows_out']} out, "
            f"{marker['rows_rejected']} rejected in {dur:.1f}s ({rate:.2f} dialogues/s){extra}  "
            f"[{self.done_units}/{self.total_units} units{eta}]"
        )

    def summary(self, s: dict[str, Any]) -> None:
        if self.quiet:
            return
        print(format_summary(s), file=self.stream, flush=True)


def format_summary(s: dict[str, Any]) -> str:
    lines = ["", "=" * 72, f"run {s.get('run_dir', '')}  ({fmt_duration(s.get('wall_s', 0))})", "-" * 72]
    lines.append(f"{'stage':<12}{'shards':>8}{'in':>8}{'out':>8}{'rejected':>10}{'time':>10}")
    for st in s.get("stages", []):
        lines.append(
            f"{st['stage']:<12}{st['shards_done']:>4}/{st['shards_total']:<3}{st['rows_in']:>8}{st['rows_out']:>8}"
            f"{st['rows_rejected']:>10}{fmt_duration(st['duration_s']):>10}"
        )
    lines.append("-" * 72)
    rej = s.get("rejected_by_reason", {})
    if rej:
        lines.append(
            "rejected by reason: "
            + ", ".join(f"{k} {v}" for k, v in sorted(rej.items(), key=lambda kv: -kv[1]))
        )
    ds = s.get("dataset")
    if ds:
        lines.append(
            f"dialogues: {s.get('dialogues_in', 0)} in -> {ds['dialogues']} accepted; "
            f"{ds['utterances']} utterances, {ds['audio_hours']:.4f} h ({ds['audio_s']:.1f} s)"
        )
        for lang, d in sorted(ds.get("by_language", {}).items()):
            lines.append(
                f"  {lang}: {d['dialogues']} dialogues, {d['utterances']} utterances, {d['audio_s']:.1f} s, "
                f"mean {d['error_kind'].upper()} {d['mean_error_rate']:.3f}, mean speaker sim {d['mean_speaker_similarity']:.3f}"
            )
        lines.append(f"dataset: {ds['path']}")
    lines.append("=" * 72)
    return "\n".join(lines)
