"""Publishing: a run's dataset as a Hugging Face dataset-repository folder, and its push to the Hub.

`export_folder` builds `<run>/export/<org>__<name>/` (data shards hard-linked when possible, the card
rewritten with the repo id, plots) and checks it the way the Hub and `datasets` will read it.
`push` creates the repository and uploads the folder with `huggingface_hub.HfApi.upload_folder`
(with `hf_xet` installed: resumable, committed in parts; rerun to resume). Shards of an earlier
push that the new export no longer has are deleted in the same commit.

The token comes from `HF_TOKEN` (or huggingface_hub's own token file) and goes only into the
Authorization header: it is never printed, logged, or written to any file, and it is removed from
any error text. Without network the push fails within `timeout_s` with a clear message: a first
request with a bounded timeout checks the endpoint and the token before anything is sent, and
huggingface_hub's own client (no timeout by default) gets bounded connect/read timeouts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kespeechchat.config import RunConfig
from kespeechchat.store import RunStore, swap_dir_in
from pipelines.card import write_card
from pipelines.package import dataset_files

HF_TOKEN_ENV = "HF_TOKEN"
DEFAULT_ENDPOINT = "https://huggingface.co"
# Paths an export owns in the repo: files there that the new export lacks are deleted on push.
OWNED_PATTERNS = ["data/*", "images/*"]


class HubError(RuntimeError):
    """A push that cannot go on; the message says why and never contains the token."""


def check_repo_id(repo_id: str) -> str:
    """`ORG/NAME` as the Hub accepts it, else a ValueError that says what is wrong."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        raise ValueError(
            f"--repo-id {repo_id!r}: expected ORG/NAME (a user or organisation, a slash, a name)"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"--repo-id {repo_id!r}: {e}") from None
    return repo_id


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config the run saved (`config.yaml`), which the card quotes."""
    import yaml

    p = RunStore(run_dir).config_path
    if not p.exists():
        raise FileNotFoundError(f"{p}: missing; {run_dir} is not a run directory (run the pipeline first)")
    try:
        return RunConfig.model_validate(yaml.safe_load(p.read_text(encoding="utf-8")))
    except Exception as e:
        raise ValueError(f"{p}: not a valid run config: {e}") from e


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_folder(run_dir: str | Path, repo_id: str, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Build the folder to upload for ``repo_id`` and verify it; returns what `verify_export` found."""

    check_repo_id(repo_id)
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    dataset = RunStore(run_dir).dataset_dir
    files = dataset_files(dataset)
    out = Path(out_dir) if out_dir else RunStore(run_dir).export_dir(repo_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-export-{out.name}-{int(time.time() * 1000)}")
    (tmp / "data").mkdir(parents=True)
    try:
        for paths in files.values():
            for p in paths:
                _link_or_copy(p, tmp / "data" / p.name)
        write_card(tmp, cfg, run_dir, repo_id=repo_id)
        report = verify_export(tmp)
        swap_dir_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report["folder"] = str(out)
    report["repo_id"] = repo_id
    return report


def verify_export(folder: str | Path) -> dict[str, Any]:
    """Check the folder as the Hub and `datasets` read it: card YAML, data_files, row counts, images.

    Offline stand-ins for the Hub's YAML validation: the card re-parses with `DatasetCard.load`, every
    `data_files` pattern matches shards and every shard is matched, `dataset_info` row counts equal
    the Parquet footers, and every image the card shows exists.
    """
    import fnmatch
    import re

    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard

    folder = Path(folder)
    readme = folder / "README.md"
    if not readme.exists():
        raise ValueError(f"{folder}: no README.md (dataset card)")
    card = DatasetCard.load(readme)
    data = card.data.to_dict()
    shards = sorted(p.relative_to(folder).as_posix() for p in (folder / "data").glob("*.parquet"))
    if not shards:
        raise ValueError(f"{folder}/data: no Parquet shards")
    configs = data.get("configs") or []
    if len(configs) != 1 or not configs[0].get("data_files"):
        raise ValueError(f"{readme}: expected one config with data_files, got {configs}")
    rows_by_split: dict[str, int] = {}
    matched: set[str] = set()
    for entry in configs[0]["data_files"]:
        split, pattern = entry["split"], entry["path"]
        hits = [s for s in shards if fnmatch.fnmatch(s, pattern)]
        if not hits:
            raise ValueError(f"{readme}: data_files pattern {pattern!r} (split {split}) matches no shard")
        matched.update(hits)
        rows_by_split[split] = sum(pq.ParquetFile(folder / h).metadata.num_rows for h in hits)
    if not sum(rows_by_split.values()):
        raise ValueError(
            f"{folder}: the dataset has no rows: nothing to publish (`datasets` cannot load an empty split)"
        )
    orphans = sorted(set(shards) - matched)
    if orphans:
        raise ValueError(f"{folder}: shards not in any split of the card: {orphans}")
    declared = {s["name"]: s["num_examples"] for s in (data.get("dataset_info") or {}).get("splits", [])}
    if declared != rows_by_split:
        raise ValueError(
            f"{readme}: dataset_info splits {declared} differ from the shards' rows {rows_by_split}"
        )
    missing = [m for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", card.text) if not (folder / m).exists()]
    if missing:
        raise ValueError(f"{readme}: images shown on the card are missing: {missing}")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return {
        "splits": rows_by_split,
        "rows": sum(rows_by_split.values()),
        "files": files,
        "bytes": sum((folder / f).stat().st_size for f in files),
    }


# -- push ----------------------------------------------------------------------------------------------


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "hf_***") if token else text


def resolve_token(token: str | None = None) -> str:
    """`token`, else `HF_TOKEN`, else huggingface_hub's saved token; a clear error when there is none."""
    if token:
        return token
    from huggingface_hub import get_token

    found = os.environ.get(HF_TOKEN_ENV) or get_token()
    if not found:
        raise HubError(
            f"no Hugging Face token: set {HF_TOKEN_ENV} to a token with write access "
            "(https://huggingface.co/settings/tokens); it is read from the environment and never stored"
        )
    return found


def preflight(endpoint: str, token: str, timeout_s: float) -> dict[str, Any]:
    """One bounded request (whoami) before any upload: reachable endpoint, valid token, write access."""
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):  # the token goes to this endpoint only
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    url = f"{endpoint.rstrip('/')}/api/whoami-v2"
    req = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}", "User-Agent": "kespeechchat"}
    )
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=timeout_s) as r:
            info = json.loads(r.read().decode("utf-8") or "{}")
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise HubError(f"{endpoint} rejected the token (HTTP 401): check {HF_TOKEN_ENV}") from None
        raise HubError(
            f"{endpoint} answered HTTP {e.code} to the token check; nothing was uploaded"
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise HubError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({_redact(str(reason), token)}; timeout {timeout_s:g} s): "
            "check the network, proxy settings (HTTPS_PROXY/NO_PROXY) or HF_ENDPOINT. Nothing was uploaded."
        ) from None
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubError(
            f"the token ({HF_TOKEN_ENV}) of {info.get('name', '?')} is read-only; use a token with write access"
        )
    return info


def ready_to_push(
    *, token: str | None = None, endpoint: str | None = None, timeout_s: float = 10.0
) -> tuple[str, str, dict[str, Any]]:
    """(token, endpoint, whoami) once offline mode, the token and the endpoint are checked; else HubError."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise HubError("offline mode is on (HF_HUB_OFFLINE=1): unset it to push")
    token = resolve_token(token)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip(
        "/"
    )
    return token, endpoint, preflight(endpoint, token, timeout_s)


@contextlib.contextmanager
def bounded_hub_client(connect_s: float, io_s: float) -> Iterator[None]:
    """huggingface_hub's shared HTTP client has no timeout by default; give it one while pushing."""
    import huggingface_hub

    try:
        import httpx2
        from huggingface_hub.utils._http import default_client_factory
    except ImportError:  # pragma: no cover - another huggingface_hub layout: keep its client
        yield
        return

    def factory():
        client = default_client_factory()
        client.timeout = httpx2.Timeout(io_s, connect=connect_s)
        return client

    huggingface_hub.set_client_factory(factory)
    try:
        yield
    finally:
        huggingface_hub.set_client_factory(default_client_factory)


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    timeout_s: float = 10.0,
    io_timeout_s: float = 300.0,
    commit_message: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Create the dataset repo (if needed) and upload ``folder``; returns the repo and commit URLs."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    folder = Path(folder)
    report = verify_export(folder)
    token, endpoint, who = ready_to_push(token=token, endpoint=endpoint, timeout_s=timeout_s)
    log(
        f"pushing {len(report['files'])} file(s), {report['bytes'] / 1e6:.1f} MB to {endpoint} as {who.get('name', '?')}"
    )
    api = HfApi(endpoint=endpoint, token=token)
    message = (
        commit_message
        or f"kespeechchat export: {report['rows']} utterances ({', '.join(f'{k} {v}' for k, v in report['splits'].items())})"
    )
    try:
        with bounded_hub_client(timeout_s, io_timeout_s):
            repo_url = api.create_repo(
                repo_id, repo_type="dataset", private=True if private else None, exist_ok=True
            )
            log(f"repository {repo_url}")
            commit = api.upload_folder(
                folder_path=str(folder),
                repo_id=repo_id,
                repo_type="dataset",
                commit_message=message,
                delete_patterns=OWNED_PATTERNS,
            )
    except HubError:
        raise
    except Exception as e:
        kind = type(e).__name__
        text = _redact(str(e), token).strip().splitlines()
        hint = (
            "; rerun the same command to resume"
            if "Timeout" in kind or "Connect" in kind or "Network" in kind
            else ""
        )
        raise HubError(
            f"push to {endpoint}/datasets/{repo_id} failed: {kind}: {' '.join(text)[:800]}{hint}"
        ) from None
    log(f"committed {commit.commit_url}")
    return {"repo_url": str(repo_url), "commit_url": commit.commit_url, "user": who.get("name"), **report}
