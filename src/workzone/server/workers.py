"""Several HTTP server processes in front of one engine (``workzone serve --http-workers N``).

One server process parses, admits and answers requests on one core; past some hundreds of requests a second its
event loop is the limit, whatever the device behind it. Here the command starts one engine
(:mod:`workzone.cascade_process`, listening on a private Unix socket, with a random key), then N ordinary
``workzone serve`` processes that share the port (``SO_REUSEPORT``: the kernel spreads connections over them) and
attach to that engine: each forms its own micro-batches, the engine merges those waiting into one run.

The command itself only supervises: SIGTERM or SIGINT is passed to every server (each finishes its requests, as
one server does), then the engine is closed. If a server or the engine exits on its own, the others are stopped
and the command exits non-zero, so that a supervisor restarts the whole; a half-running set is not kept.
Per-client limits (uploads per client, the costly lane, the refusal penalty) and the admission's expected wait
are counted by each server alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from workzone.cascade_process import CascadeProcess
from workzone.config.loader import load_pipeline_config
from workzone.errors import ConfigError
from workzone.server.app import image_limits
from workzone.server.settings import ServerSettings, settings_env

__all__ = ["run_workers", "reuse_port_socket"]

log = logging.getLogger("workzone.server")

#: How often the supervisor looks at its children (s).
_POLL_S = 0.2


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, for uvicorn (which calls ``listen``).

    Raises:
        ConfigError: the platform has no ``SO_REUSEPORT``.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("http_workers > 1 needs SO_REUSEPORT (Linux, BSD, macOS); serve with one worker here")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    return sock


def run_workers(settings: ServerSettings) -> int:
    """Run ``settings.http_workers`` servers and their engine until a signal or a death; the exit status."""
    return asyncio.run(_supervise(settings))


async def _supervise(settings: ServerSettings) -> int:
    config, path = load_pipeline_config(settings.pipeline)
    # Held (bound, never listening) for the whole run: port 0 becomes one port that every server binds.
    held = reuse_port_socket(settings.host, settings.port)
    port = held.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="workzone-engine-")
    engine = CascadeProcess(config, path.parent, device=settings.device, gpu_decode=settings.gpu_decode,
                            limits=image_limits(settings), listen=os.path.join(folder, "engine.sock"))
    servers: list[subprocess.Popen[bytes]] = []
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    status = 0
    try:
        await engine.start(largest_batch=settings.batch_size)
        assert engine.address is not None
        env = dict(os.environ) | settings_env(settings) | {
            "WORKZONE_HTTP_WORKERS": "1", "WORKZONE_ENGINE_PROCESS": "false", "WORKZONE_PORT": str(port),
            "WORKZONE_REUSE_PORT": "true", "WORKZONE_ENGINE_ADDRESS": engine.address.path,
            "WORKZONE_ENGINE_KEY": engine.address.authkey.hex()}
        for _ in range(settings.http_workers):
            servers.append(subprocess.Popen([sys.executable, "-m", "workzone.cli.main", "serve"], env=env,
                                            stdin=subprocess.DEVNULL))
        log.info("%d HTTP servers on %s:%d, one engine (pid %s)", len(servers), settings.host, port, engine.pid)
        while not stopping.is_set():
            dead = [p for p in servers if p.poll() is not None]
            if dead or not engine.ready:
                what = (f"server {dead[0].pid} exited with {dead[0].returncode}" if dead
                        else "the engine process exited")
                log.error("%s: stopping the others", what)
                status = 1
                break
            try:
                await asyncio.wait_for(stopping.wait(), _POLL_S)
            except asyncio.TimeoutError:
                pass
    finally:
        for p in servers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in servers:
            try:
                await asyncio.to_thread(p.wait, settings.shutdown_timeout_s + 10)
            except subprocess.TimeoutExpired:
                p.kill()
        await engine.aclose()
        held.close()
        shutil.rmtree(folder, ignore_errors=True)
    return status
