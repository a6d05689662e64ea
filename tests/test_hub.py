"""export-hf: the export folder, and the push against a loopback server that speaks the Hub's HTTP protocol.

The fake implements exactly the calls huggingface_hub makes for `create_repo` + `upload_folder`
without Xet (whoami-v2, repos/create, validate-yaml, tree, preupload, LFS batch + PUT + verify,
commit), and answers 404 to anything else, so a test fails if the client starts calling something
the fake does not know. The push runs through the real CLI in a subprocess, with a recognisable
fake token, so its output, files and requests can be searched for the token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from test_package import build_tiny_run, repackage

from pipelines.hub import check_repo_id, export_folder, verify_export

pytestmark = pytest.mark.slow

FAKE_TOKEN = "hf_kespeechchatFAKEtoken0123456789abcdefXYZ"
REPO = "tiny-org/tiny-speech"


class FakeHub:
    """A loopback Hugging Face Hub: repos, files, LFS objects, and a log of every request."""

    def __init__(self, token: str = FAKE_TOKEN, role: str = "write"):
        self.token, self.role = token, role
        self.requests: list[dict] = []
        self.repos: dict[str, dict] = {}
        self.lfs: dict[str, bytes] = {}
        self.commits: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, code: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                body = self._body()
                url = urlsplit(self.path)
                code, obj = hub.route(
                    method,
                    url.path,
                    parse_qs(url.query),
                    self.headers,
                    body,
                    f"http://{self.headers['Host']}",
                )
                hub.requests.append(
                    {
                        "method": method,
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": body,
                        "code": code,
                    }
                )
                self._send(code, obj)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the protocol ---------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict, headers, body: bytes, base: str):
        if path.startswith("/lfs-storage/") and method == "PUT":  # presigned storage URL: no token
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return 400, {"error": "sha256 mismatch"}
            self.lfs[oid] = body
            return 200, {}
        if (
            path == "/api/agent-harnesses" and method == "GET"
        ):  # public registry the client reads for its user agent
            return 200, {"standardEnvVars": [], "harnesses": {}}
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/whoami-v2" and method == "GET":
            return 200, {
                "type": "user",
                "name": "tester",
                "auth": {"type": "access_token", "accessToken": {"displayName": "t", "role": self.role}},
            }
        if path == "/api/repos/create" and method == "POST":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            if req.get("type") != "dataset":
                return 400, {"error": "expected a dataset repo"}
            if repo_id in self.repos:
                return 409, {
                    "error": "You already created this dataset repo",
                    "url": f"{base}/datasets/{repo_id}",
                }
            self.repos[repo_id] = {"private": req.get("visibility") == "private", "files": {}}
            return 200, {"url": f"{base}/datasets/{repo_id}"}
        if path == "/api/validate-yaml" and method == "POST":
            return 200, {"errors": [], "warnings": []}
        if path.startswith("/api/datasets/"):
            rest = path[len("/api/datasets/") :].split("/")
            repo_id, action = "/".join(rest[:2]), rest[2] if len(rest) > 2 else ""
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": "Repository not found"}
            if action == "tree" and method == "GET":
                return 200, [
                    {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for p, b in sorted(repo["files"].items())
                ]
            if action == "preupload" and method == "POST":
                files = json.loads(body)["files"]
                return 200, {
                    "files": [
                        {
                            "path": f["path"],
                            "uploadMode": "lfs" if f["path"].endswith((".parquet", ".png")) else "regular",
                            "shouldIgnore": False,
                            "oid": None,
                        }
                        for f in files
                    ]
                }
            if action == "commit" and method == "POST":
                lines = [json.loads(x) for x in body.splitlines() if x.strip()]
                ops = {"files": [], "deleted": []}
                for item in lines:
                    key, v = item["key"], item["value"]
                    if key == "file":
                        repo["files"][v["path"]] = base64.b64decode(v["content"])
                        ops["files"].append(v["path"])
                    elif key == "lfsFile":
                        if v["oid"] not in self.lfs:
                            return 422, {"error": f"LFS object {v['oid']} was never uploaded"}
                        repo["files"][v["path"]] = self.lfs[v["oid"]]
                        ops["files"].append(v["path"])
                    elif key == "deletedFile":
                        repo["files"].pop(v["path"], None)
                        ops["deleted"].append(v["path"])
                    elif key == "header":
                        ops["summary"] = v["summary"]
                oid = hashlib.sha1(json.dumps(ops).encode()).hexdigest()
                self.commits.append(ops)
                return 200, {
                    "commitUrl": f"{base}/datasets/{repo_id}/commit/{oid}",
                    "commitOid": oid,
                    "pullRequestUrl": None,
                }
        if path.endswith(".git/info/lfs/objects/batch") and method == "POST":
            req = json.loads(body)
            objects = []
            for o in req["objects"]:
                if o["oid"] in self.lfs:
                    objects.append({"oid": o["oid"], "size": o["size"]})  # already there: no actions
                else:
                    objects.append(
                        {
                            "oid": o["oid"],
                            "size": o["size"],
                            "actions": {
                                "upload": {"href": f"{base}/lfs-storage/{o['oid']}", "header": {}},
                                "verify": {"href": f"{base}/lfs-verify", "header": {}},
                            },
                        }
                    )
            return 200, {"transfer": "basic", "objects": objects}
        if path == "/lfs-verify" and method == "POST":
            req = json.loads(body)
            return (200, {}) if req["oid"] in self.lfs else (404, {"error": "object missing"})
        return 404, {"error": f"fake hub: no route {method} {path}"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_run(tmp_path_factory)


@pytest.fixture
def run_copy(tiny, tmp_path) -> Path:
    dest = tmp_path / "runs" / tiny.name
    shutil.copytree(tiny.run_dir, dest, ignore=shutil.ignore_patterns("export"))
    return dest


@pytest.fixture
def hub():
    h = FakeHub()
    yield h
    h.close()


def cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process: environment decides offline mode, endpoint and token."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    full.update(
        {
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_XET": "1",  # the fake speaks the LFS protocol, not Xet
            "HF_HUB_VERBOSITY": "debug",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
    )


def files_containing(root: Path, needle: str) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and needle.encode() in p.read_bytes():
            hits.append(str(p))
    return hits


def test_export_folder_is_a_loadable_hub_repo(run_copy, tmp_path):
    datasets = pytest.importorskip("datasets")
    report = export_folder(run_copy, REPO)
    folder = Path(report["folder"])
    assert folder == run_copy / "export" / "tiny-org__tiny-speech"
    src = sorted((run_copy / "dataset" / "data").glob("*.parquet"))
    dst = sorted((folder / "data").glob("*.parquet"))
    assert [p.name for p in src] == [p.name for p in dst]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(src, dst, strict=True))
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert f'load_dataset("{REPO}"' in readme
    assert {"README.md", "images/overview.png", "images/duration.png"} <= set(report["files"])
    ds = datasets.load_dataset(str(folder), split="train")
    assert len(ds) == report["rows"] == report["splits"]["train"]
    assert str(run_copy) not in readme and str(tmp_path) not in readme  # no local paths published


def test_verify_export_names_what_is_wrong(run_copy):
    folder = Path(export_folder(run_copy, REPO)["folder"])
    shard = next((folder / "data").glob("*.parquet"))
    stray = folder / "data" / "validation-00000-of-00001.parquet"
    shutil.copy(shard, stray)
    with pytest.raises(ValueError, match="shards not in any split of the card.*validation-00000"):
        verify_export(folder)
    stray.unlink()
    (folder / "images" / "duration.png").unlink()
    with pytest.raises(ValueError, match=r"images shown on the card are missing: \['images/duration.png'\]"):
        verify_export(folder)
    readme = folder / "README.md"
    text = readme.read_text(encoding="utf-8")
    wrong = re.sub(r"num_examples: (\d+)", lambda m: f"num_examples: {int(m[1]) + 1}", text, count=1)
    readme.write_text(wrong, encoding="utf-8")
    with pytest.raises(ValueError, match="dataset_info splits .* differ from the shards' rows"):
        verify_export(folder)


def test_repo_id_is_checked():
    assert check_repo_id("org/name") == "org/name"
    for bad in ("name", "a/b/c", "org/bad name", "org/--x"):
        with pytest.raises(ValueError, match="--repo-id"):
            check_repo_id(bad)


def test_push_uploads_the_folder_and_never_leaks_the_token(run_copy, hub, tmp_path):
    res = cli(["export-hf", str(run_copy), "--repo-id", REPO, "--push", "--private"], tmp_path,
              HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT=hub.url)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"published: {hub.url}/datasets/{REPO}" in res.stdout
    repo = hub.repos[REPO]
    assert repo["private"] is True
    folder = run_copy / "export" / "tiny-org__tiny-speech"
    local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert repo["files"] == local
    assert [r["path"] for r in hub.requests if r["code"] >= 400] == []  # every call was one the fake knows
    # the token: only ever in the Authorization header of requests to the Hub API
    for r in hub.requests:
        assert FAKE_TOKEN not in r["path"]
        assert FAKE_TOKEN.encode() not in r["body"]
        for k, v in r["headers"].items():
            if FAKE_TOKEN in v:
                assert k.lower() == "authorization", k
        if r["path"].startswith("/lfs-storage/"):
            assert "Authorization" not in r["headers"]
    assert FAKE_TOKEN not in res.stdout + res.stderr
    assert "Request" in res.stderr  # huggingface_hub's debug log was on, and it did not show the token either
    assert files_containing(run_copy, FAKE_TOKEN) == []
    if (tmp_path / "hf-home").exists():
        assert files_containing(tmp_path / "hf-home", FAKE_TOKEN) == []


def test_a_second_push_replaces_the_shards_of_the_first(tiny, hub, tmp_path):
    cfg, _ = repackage(tiny, tmp_path / "many", target_shard_mb=0.05)
    run = cfg.run_dir
    res = cli(
        ["export-hf", str(run), "--repo-id", REPO, "--push"],
        tmp_path,
        HF_TOKEN=FAKE_TOKEN,
        HF_ENDPOINT=hub.url,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    first = sorted(p for p in hub.repos[REPO]["files"] if p.startswith("data/"))
    assert len(first) >= 2 and hub.repos[REPO]["private"] is False
    data = cfg.model_dump(mode="json")
    data["package"]["target_shard_mb"] = 500.0
    from kespeechchat.config import RunConfig
    from pipelines.runner import Pipeline

    Pipeline(RunConfig.model_validate(data), quiet=True).run(only="package")
    res = cli(
        ["export-hf", str(run), "--repo-id", REPO, "--push"],
        tmp_path,
        HF_TOKEN=FAKE_TOKEN,
        HF_ENDPOINT=hub.url,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p for p in hub.repos[REPO]["files"] if p.startswith("data/")) == [
        "data/train-00000-of-00001.parquet"
    ]
    assert set(hub.commits[-1]["deleted"]) == set(first) - {"data/train-00000-of-00001.parquet"}


def test_push_without_network_fails_fast_with_a_clear_message(run_copy, tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = cli(["export-hf", str(run_copy), "--repo-id", REPO, "--push"], tmp_path,
              HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT=f"http://127.0.0.1:{port}")  # fmt: skip
    assert res.returncode == 1
    assert f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port}" in res.stderr
    assert "Nothing was uploaded" in res.stderr
    assert FAKE_TOKEN not in res.stdout + res.stderr
    assert not (run_copy / "export").exists()  # it stopped before building anything


def test_push_to_a_silent_endpoint_times_out(run_copy, tmp_path):
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        res = cli(["export-hf", str(run_copy), "--repo-id", REPO, "--push", "--timeout", "1"], tmp_path,
                  HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT=f"http://127.0.0.1:{port}")  # fmt: skip
    assert res.returncode == 1
    assert "cannot reach the Hugging Face Hub" in res.stderr and "timed out" in res.stderr
    assert FAKE_TOKEN not in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("env", "role", "message"),
    [
        ({"HF_TOKEN": "hf_wrongTOKEN_987654321"}, "write", "rejected the token (HTTP 401)"),
        ({"HF_TOKEN": FAKE_TOKEN}, "read", "is read-only"),
        ({}, "write", "no Hugging Face token: set HF_TOKEN"),
        ({"HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1"}, "write", "offline mode is on (HF_HUB_OFFLINE=1)"),
    ],
)
def test_push_refuses_bad_tokens_and_offline_mode(run_copy, tmp_path, env, role, message):
    h = FakeHub(role=role)
    try:
        res = cli(
            ["export-hf", str(run_copy), "--repo-id", REPO, "--push"], tmp_path, HF_ENDPOINT=h.url, **env
        )
    finally:
        h.close()
    assert res.returncode == 1
    assert message in res.stderr
    for secret in (FAKE_TOKEN, "hf_wrongTOKEN_987654321"):
        assert secret not in res.stdout + res.stderr
    assert h.repos == {}  # nothing was created
