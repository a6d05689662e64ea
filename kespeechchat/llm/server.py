"""A llama.cpp OpenAI-compatible server on loopback, started and stopped by the run itself.

The embedded profile has no LLM service to talk to, so a run starts a server on 127.0.0.1 with a
random port and a random API key, waits until ``GET /v1/models`` answers, and stops it at the end.

Two engines. ``native``: llama.cpp's own ``llama-server`` (``make install`` builds it from the
llama.cpp source inside the llama-cpp-python sdist), which decodes ``slots`` requests at once
(continuous batching) and reuses a cached prompt prefix across requests. ``python``: the
``llama_cpp.server`` module of llama-cpp-python, one request at a time; used when no binary is
found (``engine="auto"``). The child is tied to the parent's life:
Linux ``PR_SET_PDEATHSIG`` (set by a tiny launcher that then ``exec``s the server, so no unsafe
``preexec_fn`` runs in a threaded parent) kills it when the parent dies, even by SIGKILL, and a
``weakref.finalize`` stops it when the object goes away or the interpreter exits.

The API key travels to the child in its environment (``API_KEY``, read by the server's
settings), not on its command line, so ``ps`` does not show it; it is never logged.
Note: PDEATHSIG fires when the *thread* that started the server ends, so start it from a
thread that lives as long as the server (the main thread, or an actor's).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

INSTALL_HINT = "the managed LLM server needs llama-cpp-python: pip install 'kespeechchat[llamacpp]'"
POLL_INTERVAL_S = 0.25
STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 3000
PORT_ATTEMPTS = 3

SERVER_BINARY_ENV = "KESPEECHCHAT_LLAMA_SERVER"
ENGINES = ("auto", "native", "python")

# Runs in the child before the server: die with the parent, then become the server (same pid).
_LAUNCHER = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != parent:  # the parent died before prctl took effect
    sys.exit(3)
os.execv(sys.argv[2], sys.argv[2:])
"""


def llama_server_binary() -> Path | None:
    """llama.cpp's ``llama-server``: ``$KESPEECHCHAT_LLAMA_SERVER``, else next to this interpreter
    (where ``make install`` puts it), else on ``PATH``; None when there is none."""
    named = os.environ.get(SERVER_BINARY_ENV)
    if named:
        p = Path(named)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise FileNotFoundError(f"${SERVER_BINARY_ENV}={named}: no executable there")
        return p
    here = Path(sys.executable).parent / "llama-server"
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which("llama-server")
    return Path(found) if found else None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _kill(proc: subprocess.Popen | None) -> None:
    """terminate → wait → kill; safe to call twice and from a finalizer."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


class ManagedLlamaServer:
    """``with ManagedLlamaServer(gguf) as srv:`` gives ``srv.base_url``, ``srv.api_key``, ``srv.model_name``."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        start_timeout_s: float = 120,
        slots: int = 1,
        engine: str = "auto",
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: expected one of {ENGINES}")
        self.binary = llama_server_binary() if engine != "python" else None
        if engine == "native" and self.binary is None:
            raise FileNotFoundError(
                "llama.cpp's llama-server was not found (make install builds it into the virtual "
                f"environment; or set ${SERVER_BINARY_ENV})"
            )
        self.engine = "native" if self.binary is not None else "python"
        self.slots = max(1, int(slots)) if self.engine == "native" else 1
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or _default_threads()
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.log_path = Path(log_path) if log_path is not None else None
        self._temp_log = False  # a log we created ourselves is removed after a clean stop
        self.start_timeout_s = start_timeout_s
        self.model_name = self.model_path.stem
        self.api_key = ""
        self._proc: subprocess.Popen | None = None
        self._log_file: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    def __repr__(self) -> str:  # no key here, ever
        return f"ManagedLlamaServer(model={self.model_path.name!r}, base_url={self.base_url!r}, running={self.running})"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1" if self.port else ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the server and wait until it answers; raise RuntimeError with the log tail if it cannot."""
        if self.running:
            return
        import importlib.util

        if self.engine == "python" and importlib.util.find_spec("llama_cpp") is None:
            raise ImportError(INSTALL_HINT)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"GGUF model {self.model_path} not found")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._temp_log = True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(PORT_ATTEMPTS):
            self.port = self.requested_port or free_port(self.host)
            self.api_key = secrets.token_urlsafe(24)
            self._spawn()
            try:
                self._wait_ready()
                log.info("llama.cpp server %s ready at %s (pid %s)", self.model_name, self.base_url, self.pid)
                return
            except RuntimeError as e:
                tail = self.log_tail()
                self._stop_process()
                port_taken = "address already in use" in tail.lower()
                if port_taken and self.requested_port is None and attempt + 1 < PORT_ATTEMPTS:
                    continue  # another process took the port between our probe and the bind
                self._temp_log = False  # keep it for whoever reads the error
                raise RuntimeError(f"{e}\n--- server log tail ({self.log_path}) ---\n{tail}") from None

    def _command(self) -> list[str]:
        if self.engine == "native":
            assert self.binary is not None
            flags = {
                "--model": str(self.model_path),
                "--alias": self.model_name,
                "--host": self.host,
                "--port": str(self.port),
                "--ctx-size": str(self.n_ctx * self.slots),  # every slot gets n_ctx
                "--parallel": str(self.slots),
                "--threads": str(self.n_threads),
                "--threads-batch": str(self.n_threads),
            }
            args = [item for flag, value in flags.items() for item in (flag, value)]
            target = [str(self.binary), *args, "--cont-batching", "--no-webui"]
        else:
            flags = {
                "--model": str(self.model_path),
                "--model_alias": self.model_name,
                "--host": self.host,
                "--port": str(self.port),
                "--n_ctx": str(self.n_ctx),
                "--n_threads": str(self.n_threads),
                "--n_threads_batch": str(self.n_threads),
                "--use_mlock": "False",  # do not pin a GB of RAM on a shared machine
                "--logits_all": "False",  # we never read logits; keeping them all costs memory and time
                "--verbose": "False",
            }
            args = [item for flag, value in flags.items() for item in (flag, value)]
            target = [sys.executable, "-m", "llama_cpp.server", *args]
        return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *target]

    def _environment(self) -> dict[str, str]:
        """Parent environment minus anything the server would read as a setting, plus ours."""
        env = {k: v for k, v in os.environ.items() if k.upper() not in self._setting_names()}
        env.update(
            {
                "OMP_WAIT_POLICY": "PASSIVE",  # spinning OpenMP threads starve everything else on a busy CPU
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
        )
        if self.engine == "native":
            env["LLAMA_API_KEY"] = (
                self.api_key
            )  # read by --api-key's environment form: not on the command line
        else:
            env.update(
                {
                    "API_KEY": self.api_key,
                    "HOST": self.host,  # uvicorn.run reads HOST/PORT from the environment over the flags
                    "PORT": str(self.port),
                    "PYTHONUNBUFFERED": "1",
                }
            )
        return env

    def _setting_names(self) -> set[str]:
        if self.engine == "native":  # llama.cpp reads LLAMA_ARG_* and LLAMA_API_KEY
            return {k.upper() for k in os.environ if k.upper().startswith(("LLAMA_ARG_", "LLAMA_API_KEY"))}
        try:
            from llama_cpp.server.settings import ConfigFileSettings, Settings

            names = {n.upper() for n in (*Settings.model_fields, *ConfigFileSettings.model_fields)}
        except Exception:  # an older/newer server layout: drop at least the names it reads directly
            names = set()
        return names | {"HOST", "PORT", "API_KEY", "CONFIG_FILE", "MODEL"}

    def _spawn(self) -> None:
        assert self.log_path is not None
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._log_file.write(
            f"\n=== start {time.strftime('%Y-%m-%d %H:%M:%S')} port {self.port} ===\n".encode()
        )
        self._log_file.flush()
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop the server in order
            close_fds=True,
        )
        self._finalizer = weakref.finalize(self, _kill, self._proc)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
        request = urllib.request.Request(
            f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.api_key}"}
        )
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(f"llama.cpp server exited with code {code} before answering")
            try:
                with opener.open(request, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as e:
                if e.code in (401, 403):
                    raise RuntimeError(f"llama.cpp server refused its own API key (HTTP {e.code})") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server did not answer within {self.start_timeout_s:g} s")
            time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        """Terminate the server (then kill it if it hangs); safe to call twice."""
        self._stop_process()
        if self._temp_log and self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path, self._temp_log = None, False

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        _kill(proc)
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None

    def log_tail(self, n_chars: int = LOG_TAIL_CHARS) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n_chars))
            return f.read().decode("utf-8", errors="replace")

    def __enter__(self) -> ManagedLlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
