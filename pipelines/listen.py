"""A run as a page to listen to: one offline HTML file with its audio beside it.

`kespeechchat report RUN` writes ``RUN/report/index.html``, ``audio/`` (the FLAC of every turn
shown) and ``images/`` (the card's plots). The page holds the summary the CLI prints, the rejects
per stage and reason, every accepted dialogue (a seeded sample on big runs) and the rejected
dialogues that have audio, turn by turn: text, what the ASR heard with the differences marked,
CER/WER, speaker similarity, DNSMOS, voice and identity, and a player. Filters (status, language,
reason, score ranges) run in the page itself; nothing is fetched from a server.
"""

from __future__ import annotations

import difflib
import html
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kespeechchat.config import RunConfig
from kespeechchat.metrics import error_kind, normalize_for_scoring
from kespeechchat.progress import format_summary
from kespeechchat.store import RunStore, heavy_sources, swap_dir_in
from pipelines.report import load_run_config, read_rejects, run_summary
from pipelines.stages import STAGE_NAMES
from pipelines.stages.select import row_failures

REPORT_DIR = "report"


@dataclass(frozen=True)
class ReportOptions:
    """How much of a run the page holds. ``None`` means every dialogue."""

    accepted: int | None = 200
    rejected: int | None = 200
    seed: int = 0
    max_mb: float = 200.0


@dataclass
class Turn:
    index: int
    role: str
    text: str
    asr: str | None
    kind: str  # "cer" | "wer"
    error: float | None
    similarity: float | None
    dnsmos: float | None
    duration_s: float | None
    attempts: int | None
    voice_id: str | None
    identity: str | None
    failure: str | None
    audio: bytes | None = field(default=None, repr=False)


@dataclass
class Dialogue:
    dialogue_id: str
    language: str
    status: str  # "accepted" | "rejected"
    stage: str | None
    reason: str | None
    detail: str | None
    turns: list[Turn]

    @property
    def audio_bytes(self) -> int:
        return sum(len(t.audio or b"") for t in self.turns)


@dataclass
class ReportResult:
    path: Path
    accepted_shown: int
    accepted_total: int
    rejected_shown: int
    rejected_with_audio: int
    audio_files: int
    audio_bytes: int
    omitted_for_size: int
    page_bytes: int

    def describe(self) -> str:
        mb = self.audio_bytes / 1e6
        lines = [
            f"report: {self.path}",
            f"  accepted dialogues shown: {self.accepted_shown} of {self.accepted_total}",
            f"  rejected dialogues with audio shown: {self.rejected_shown} of {self.rejected_with_audio}",
            f"  audio: {self.audio_files} file(s), {mb:.1f} MB; page {self.page_bytes / 1e3:.0f} kB",
        ]
        if self.omitted_for_size:
            lines.append(f"  {self.omitted_for_size} dialogue(s) left out to stay under the size limit")
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading the run


def _number(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _at(row: dict[str, Any], column: str, i: int) -> Any:
    values = row.get(column)
    return values[i] if values is not None and i < len(values) else None


def _identities(store: RunStore) -> dict[str, str]:
    path = store.library_path
    if not path.is_file():
        return {}
    t = pq.read_table(path, columns=["voice_id", "identity_id"])
    return dict(zip(t.column("voice_id").to_pylist(), t.column("identity_id").to_pylist(), strict=True))


def _turns(row: dict[str, Any], cfg: RunConfig, identities: dict[str, str]) -> list[Turn]:
    language = row["language"]
    failures: dict[int, str] = {}
    if row.get("error_rates") is not None and row.get("spoken_texts") is not None:
        failures = dict(row_failures(cfg.select, row))
    texts = row.get("spoken_texts") or row.get("rewritten_texts") or row["source_texts"]
    out = []
    for i, text in enumerate(texts):
        voice = _at(row, "voice_ids", i)
        attempts = _at(row, "tts_attempts", i)
        out.append(
            Turn(
                index=i,
                role=row["roles"][i],
                text=text,
                asr=_at(row, "asr_texts", i),
                kind=error_kind(language),
                error=_number(_at(row, "error_rates", i)),
                similarity=_number(_at(row, "speaker_similarities", i)),
                dnsmos=_number(_at(row, "dnsmos_ovrl", i)),
                duration_s=_number(_at(row, "durations_s", i)),
                attempts=None if attempts is None else int(attempts),
                voice_id=voice,
                identity=identities.get(voice) if voice else None,
                failure=failures.get(i),
                audio=_at(row, "audio_flac", i),
            )
        )
    return out


# A run can hold millions of dialogues: the samples are drawn from ids (one light column), and only
# the sampled rows are read with their audio, one shard at a time.
Ref = tuple[str, int, str]  # (stage, shard, dialogue_id)


def _ids(path: Path) -> list[str]:
    return pq.read_table(path, columns=["dialogue_id"]).column("dialogue_id").to_pylist()


def _accepted_refs(store: RunStore) -> list[Ref]:
    refs = [
        ("select", shard, i)
        for shard in store.shards()
        if store.data_path("select", shard).is_file()
        for i in _ids(store.data_path("select", shard))
    ]
    return sorted(refs, key=lambda r: r[2])


def _rejected_refs(store: RunStore, stages: tuple[str, ...]) -> list[Ref]:
    """Rejected dialogues whose audio is still in the run (the stage that holds it has their row)."""
    refs: list[Ref] = []
    for stage in stages:
        for shard in store.shards():
            path = store.rejected_path(stage, shard)
            if not path.is_file():
                continue
            source = heavy_sources(pq.read_schema(path).empty_table()).get("audio_flac")
            if not source or not store.data_path(source, shard).is_file():
                continue
            with_audio = set(_ids(store.data_path(source, shard)))
            refs += [(stage, shard, i) for i in _ids(path) if i in with_audio]
    return sorted(refs, key=lambda r: r[2])


def _rows(table: pa.Table, ids: set[str]) -> list[dict[str, Any]]:
    return table.filter(pc.is_in(table.column("dialogue_id"), pa.array(sorted(ids)))).to_pylist()


def _load(store: RunStore, refs: list[Ref], rejected: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    """dialogue_id -> (stage, row with its audio) for the sampled refs."""
    wanted: dict[tuple[str, int], set[str]] = {}
    for stage, shard, i in refs:
        wanted.setdefault((stage, shard), set()).add(i)
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for (stage, shard), ids in wanted.items():
        if not rejected:
            rows = _rows(store.read_table(stage, shard), ids)
        else:
            path = store.rejected_path(stage, shard)
            rows = _rows(pq.read_table(path), ids)
            source = heavy_sources(pq.read_schema(path).empty_table())["audio_flac"]
            audio = _rows(
                pq.read_table(store.data_path(source, shard), columns=["dialogue_id", "audio_flac"]), ids
            )
            by_id = {a["dialogue_id"]: a["audio_flac"] for a in audio}
            for row in rows:
                row["audio_flac"] = by_id[row["dialogue_id"]]
        out.update((row["dialogue_id"], (stage, row)) for row in rows)
    return out


def _sample(items: list[Any], n: int | None, seed: int) -> list[Any]:
    if n is None or len(items) <= n:
        return items
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [x for i, x in enumerate(items) if i in keep]


def collect(run_dir: str | Path, opts: ReportOptions) -> tuple[list[Dialogue], dict[str, int]]:
    """The dialogues the page shows (with audio in memory) and the counts they were drawn from."""
    store = RunStore(run_dir)
    cfg = load_run_config(store.root)
    identities = _identities(store)
    accepted = _accepted_refs(store)
    rejected = _rejected_refs(store, tuple(STAGE_NAMES[1:-1]))
    counts = {"accepted_total": len(accepted), "rejected_with_audio": len(rejected)}
    dialogues = []
    for refs, is_rejected, n in ((accepted, False, opts.accepted), (rejected, True, opts.rejected)):
        picked = _sample(refs, n, opts.seed)
        loaded = _load(store, picked, is_rejected)
        for _, _, i in picked:
            stage, r = loaded[i]
            dialogues.append(
                Dialogue(
                    r["dialogue_id"],
                    r["language"],
                    "rejected" if is_rejected else "accepted",
                    stage if is_rejected else None,
                    r.get("reject_reason"),
                    r.get("reject_detail"),
                    _turns(r, cfg, identities),
                )
            )
    return dialogues, counts


# --------------------------------------------------------------------------- rendering


def diff_html(reference: str, heard: str, language: str) -> tuple[str, str]:
    """Both sides as scored (normalised), with the differing tokens marked: <del> in the text for
    what was not heard or heard otherwise, <ins> in the transcript for what was heard instead."""
    kind = error_kind(language)
    ref = normalize_for_scoring(reference, language)
    hyp = normalize_for_scoring(heard, language)
    a, b = (list(ref), list(hyp)) if kind == "cer" else (ref.split(), hyp.split())
    sep = "" if kind == "cer" else " "
    left: list[str] = []
    right: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        x, y = html.escape(sep.join(a[i1:i2])), html.escape(sep.join(b[j1:j2]))
        if tag == "equal":
            left.append(x)
            right.append(y)
            continue
        if x:
            left.append(f'<del class="{tag}">{x}</del>')
        if y:
            right.append(f'<ins class="{tag}">{y}</ins>')
    return sep.join(left), sep.join(right)


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _turn_html(d: Dialogue, t: Turn, audio_href: str | None) -> str:
    err_name = "CER" if t.kind == "cer" else "WER"
    attrs = {
        "class": "turn fail" if t.failure else "turn",
        "data-err": "" if t.error is None else f"{t.error:.4f}",
        "data-sim": "" if t.similarity is None else f"{t.similarity:.4f}",
        "data-mos": "" if t.dnsmos is None else f"{t.dnsmos:.3f}",
        "data-dur": "" if t.duration_s is None else f"{t.duration_s:.3f}",
    }
    head = " ".join(f'{k}="{html.escape(v)}"' for k, v in attrs.items())
    parts = [f"<div {head}>"]
    who = f"{html.escape(t.role)} · {html.escape(t.voice_id or '–')}"
    if t.identity:
        who += f" · identity {html.escape(t.identity)}"
    parts.append(f'<div class="who">turn {t.index} · {who}</div>')
    parts.append(f'<div class="text">{html.escape(t.text)}</div>')
    if t.asr is not None:
        ref, hyp = diff_html(t.text, t.asr, d.language)
        parts.append(f'<div class="heard"><span class="lbl">heard</span> {html.escape(t.asr)}</div>')
        parts.append(
            f'<div class="diff"><span class="lbl">scored</span> <span class="ref">{ref}</span>'
            f' <span class="arrow">→</span> <span class="hyp">{hyp}</span></div>'
        )
    scores = (
        f"{err_name} {_fmt(t.error, '.3f')} · similarity {_fmt(t.similarity, '.3f')} · "
        f"DNSMOS {_fmt(t.dnsmos, '.2f')} · {_fmt(t.duration_s, '.1f')} s"
    )
    if t.attempts and t.attempts > 1:
        scores += f" · {t.attempts} attempts"
    parts.append(f'<div class="scores">{scores}</div>')
    if t.failure:
        parts.append(f'<div class="why">fails: {html.escape(t.failure)}</div>')
    if audio_href:
        parts.append(f'<audio controls preload="metadata" src="{html.escape(audio_href)}"></audio>')
    parts.append("</div>")
    return "".join(parts)


def _dialogue_html(d: Dialogue, hrefs: list[str | None]) -> str:
    attrs = (
        f'class="dlg {d.status}" data-status="{d.status}" data-lang="{html.escape(d.language)}" '
        f'data-reason="{html.escape(d.reason or "")}" id="{html.escape(d.dialogue_id)}"'
    )
    head = f"{html.escape(d.dialogue_id)} · {html.escape(d.language)} · {d.status}"
    if d.status == "rejected":
        head += f" at {html.escape(d.stage or '')}: <b>{html.escape(d.reason or '')}</b>"
    out = [f"<article {attrs}><h3>{head}</h3>"]
    if d.detail:
        out.append(f"<details><summary>detail</summary><pre>{html.escape(d.detail)}</pre></details>")
    out += [_turn_html(d, t, h) for t, h in zip(d.turns, hrefs, strict=True)]
    out.append("</article>")
    return "".join(out)


def _rejects_table(run_dir: Path, summary: dict[str, Any]) -> str:
    examples: dict[tuple[str, str], str] = {}
    for r in read_rejects(run_dir).to_pylist():
        key = (r["stage"], r["reason"] or "")
        if key not in examples:
            where = r["dialogue_id"] or f"{r['source_file']}#{r['record_index']}"
            examples[key] = f"{where}: {(r['detail'] or '')[:300]}"
    rows = []
    for key, n in sorted(summary.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1]):
        stage, _, reason = key.partition(":")
        ex = examples.get((stage, reason), "")
        rows.append(
            f"<tr><td>{html.escape(stage)}</td><td>{html.escape(reason)}</td><td class=num>{n}</td>"
            f"<td class=ex>{html.escape(ex)}</td></tr>"
        )
    if not rows:
        return "<p>No dialogue was rejected.</p>"
    return (
        '<table id="rejects"><tr><th>stage</th><th>reason</th><th>dialogues</th><th>one example</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _plots(store: RunStore, out: Path) -> list[str]:
    images = store.dataset_dir / "images"
    names = []
    if images.is_dir():
        (out / "images").mkdir(exist_ok=True)
        for png in sorted(images.glob("*.png")):
            if png.name == "overview.png":
                continue
            shutil.copyfile(png, out / "images" / png.name)
            names.append(f"images/{png.name}")
    return names


def _options(values: list[str], all_label: str) -> str:
    opts = [f'<option value="">{all_label}</option>']
    opts += [f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values]
    return "".join(opts)


def _page(
    title: str,
    summary_text: str,
    rejects_html: str,
    plots: list[str],
    dialogues_html: tuple[str, str],
    dialogues: list[Dialogue],
    note: str,
) -> str:
    languages = sorted({d.language for d in dialogues})
    reasons = sorted({d.reason for d in dialogues if d.reason})
    plots_html = "".join(f'<img src="{html.escape(p)}" alt="{html.escape(p)}">' for p in plots) or (
        "<p>No dataset yet: the plots come with <code>package</code>.</p>"
    )
    return _TEMPLATE.format(
        title=html.escape(title),
        summary=html.escape(summary_text),
        rejects=rejects_html,
        plots=plots_html,
        languages=_options(languages, "all languages"),
        reasons=_options(reasons, "any reason"),
        accepted=dialogues_html[0] or "<p>None.</p>",
        rejected=dialogues_html[1] or "<p>None with audio.</p>",
        note=html.escape(note),
        script=_SCRIPT,
    )


def _write_folder(
    tmp: Path,
    store: RunStore,
    summary: dict[str, Any],
    shown: list[Dialogue],
    counts: dict[str, int],
    omitted: int,
    opts: ReportOptions,
) -> tuple[int, int]:
    """Audio files, plots and the page into ``tmp``; returns (audio files, accepted dialogues shown)."""
    (tmp / "audio").mkdir()
    files = 0
    columns: dict[str, list[str]] = {"accepted": [], "rejected": []}
    for d in shown:
        hrefs: list[str | None] = []
        for t in d.turns:
            if not t.audio:
                hrefs.append(None)
                continue
            name = f"audio/{d.status}-{d.dialogue_id}-{t.index}.flac"
            (tmp / name).write_bytes(t.audio)
            files += 1
            hrefs.append(name)
        columns[d.status].append(_dialogue_html(d, hrefs))
    n_acc = len(columns["accepted"])
    cut = f" ({omitted} left out for the {opts.max_mb:g} MB limit)" if omitted else ""
    note = (
        f"{n_acc} of {counts['accepted_total']} accepted dialogues and {len(shown) - n_acc} of "
        f"{counts['rejected_with_audio']} rejected dialogues with audio{cut}; "
        f"sample seed {opts.seed}; written {time.strftime('%Y-%m-%d %H:%M')}"
    )
    page = _page(
        f"kespeechchat run {store.root.name}",
        format_summary(summary).strip("\n"),
        _rejects_table(store.root, summary),
        _plots(store, tmp),
        ("".join(columns["accepted"]), "".join(columns["rejected"])),
        shown,
        note,
    )
    (tmp / "index.html").write_text(page, encoding="utf-8")
    return files, n_acc


def write_report(
    run_dir: str | Path, out_dir: str | Path | None = None, opts: ReportOptions | None = None
) -> ReportResult:
    """Write the page, its audio and plots; the folder is swapped in whole (never half-written)."""
    opts = opts or ReportOptions()
    store = RunStore(run_dir)
    load_run_config(store.root)  # a clear error for a folder that is not a run
    out_dir = Path(out_dir) if out_dir else store.root / REPORT_DIR
    summary = run_summary(store.root)
    dialogues, counts = collect(store.root, opts)

    limit = int(opts.max_mb * 1e6)
    shown: list[Dialogue] = []
    used = omitted = 0
    for d in dialogues:  # accepted first: the size limit cuts the rejected side first
        if used + d.audio_bytes > limit:
            omitted += 1
            continue
        used += d.audio_bytes
        shown.append(d)

    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{int(time.time() * 1000)}")
    try:
        tmp.mkdir(parents=True)
        files, n_acc = _write_folder(tmp, store, summary, shown, counts, omitted, opts)
        page_bytes = (tmp / "index.html").stat().st_size
        swap_dir_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ReportResult(
        path=out_dir / "index.html",
        accepted_shown=n_acc,
        accepted_total=counts["accepted_total"],
        rejected_shown=len(shown) - n_acc,
        rejected_with_audio=counts["rejected_with_audio"],
        audio_files=files,
        audio_bytes=used,
        omitted_for_size=omitted,
        page_bytes=page_bytes,
    )


_SCRIPT = """
const $ = (s) => document.querySelector(s);
function num(v, dflt) { const x = parseFloat(v); return Number.isFinite(x) ? x : dflt; }
function inRange(v, lo, hi) { if (v === '') return true; const x = parseFloat(v); return x >= lo && x <= hi; }
function applyFilters() {
  const status = $('#f-status').value, lang = $('#f-lang').value, reason = $('#f-reason').value;
  const errLo = num($('#f-err-min').value, -Infinity), errHi = num($('#f-err-max').value, Infinity);
  const simLo = num($('#f-sim-min').value, -Infinity), simHi = num($('#f-sim-max').value, Infinity);
  const failOnly = $('#f-fail-only').checked;
  let dShown = 0, tShown = 0;
  for (const d of document.querySelectorAll('article.dlg')) {
    let ok = (!status || d.dataset.status === status) && (!lang || d.dataset.lang === lang)
      && (!reason || d.dataset.reason === reason);
    let turns = 0;
    for (const t of d.querySelectorAll('.turn')) {
      const tok = ok && inRange(t.dataset.err, errLo, errHi) && inRange(t.dataset.sim, simLo, simHi)
        && (!failOnly || t.classList.contains('fail'));
      t.hidden = !tok;
      if (tok) turns++;
    }
    d.hidden = !(ok && turns > 0);
    if (!d.hidden) { dShown++; tShown += turns; }
  }
  $('#shown').textContent = dShown + ' dialogue(s), ' + tShown + ' turn(s) shown';
}
for (const el of document.querySelectorAll('#filters select, #filters input'))
  el.addEventListener('input', applyFilters);
applyFilters();
"""

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", "WenQuanYi Zen Hei", sans-serif;
  margin: 0 1.5em 3em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }} h3 {{ font-size: 1em; margin: 0 0 .4em; }}
pre.summary {{ background: #f6f6f6; padding: .8em; overflow-x: auto; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: .2em .5em; vertical-align: top; }}
td.num {{ text-align: right; }} td.ex {{ font-size: .85em; color: #555; max-width: 60em; }}
.plots img {{ max-width: 32%; min-width: 280px; margin: .2em; border: 1px solid #eee; }}
#filters {{ position: sticky; top: 0; background: #fff; padding: .6em 0; border-bottom: 1px solid #ccc; z-index: 1; }}
#filters label {{ margin-right: 1em; white-space: nowrap; }} #filters input[type=number] {{ width: 5em; }}
.columns {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1.2em; }}
@media (max-width: 1000px) {{ .columns {{ grid-template-columns: 1fr; }} }}
article.dlg {{ border: 1px solid #ccc; border-radius: 6px; padding: .6em .8em; margin: .6em 0; }}
article.accepted {{ border-left: 5px solid #2a8; }} article.rejected {{ border-left: 5px solid #c44; }}
.turn {{ padding: .4em 0; border-top: 1px dashed #ddd; }} .turn.fail {{ background: #fff3f3; }}
.who, .scores {{ color: #666; font-size: .85em; }} .text {{ font-size: 1.05em; }}
.heard, .diff {{ font-size: .9em; }} .lbl {{ color: #999; font-size: .8em; text-transform: uppercase; }}
del {{ background: #fcc; text-decoration: line-through; }} ins {{ background: #cfc; text-decoration: none; }}
.why {{ color: #b00; font-weight: 600; font-size: .9em; }} audio {{ width: 100%; height: 2.2em; margin-top: .2em; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="note">{note}</p>
<h2>Summary</h2>
<pre class="summary">{summary}</pre>
<h2>Rejects per stage and reason</h2>
{rejects}
<h2>Plots</h2>
<div class="plots">{plots}</div>
<h2>Dialogues</h2>
<div id="filters">
<label>status <select id="f-status"><option value="">accepted and rejected</option>
<option value="accepted">accepted</option><option value="rejected">rejected</option></select></label>
<label>language <select id="f-lang">{languages}</select></label>
<label>reason <select id="f-reason">{reasons}</select></label>
<label>CER/WER from <input id="f-err-min" type="number" step="0.01" min="0"> to
<input id="f-err-max" type="number" step="0.01" min="0"></label>
<label>similarity from <input id="f-sim-min" type="number" step="0.01"> to
<input id="f-sim-max" type="number" step="0.01"></label>
<label><input id="f-fail-only" type="checkbox"> failing turns only</label>
<span id="shown"></span>
</div>
<div class="columns">
<section id="accepted"><h2>Accepted</h2>{accepted}</section>
<section id="rejected"><h2>Rejected, with audio</h2>{rejected}</section>
</div>
<script>{script}</script>
</body></html>
"""
