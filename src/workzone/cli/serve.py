"""``workzone serve`` (HTTP service) and ``workzone miner`` (NATIX StreetVision SN72 miner).

Flags override the environment (``WORKZONE_*`` for serve, ``WORKZONE_MINER_*`` for the miner),
which overrides the defaults; the settings models are the only readers of the environment. Heavy
imports (FastAPI, uvicorn, bittensor) happen inside the commands.
"""

from __future__ import annotations

from typing import Annotated, Any, List, Optional

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``miner`` to ``app``."""
    app.command("serve")(serve)
    app.command("miner")(miner)


def _settings(cls: Any, overrides: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from workzone.errors import ConfigError

    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid {cls.__name__}: {problems}") from exc


def serve(
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", "-p", help="built-in pipeline name or YAML file "
                                                    "(env WORKZONE_PIPELINE; default: default)")] = None,
    host: Annotated[Optional[str], typer.Option(help="interface to bind (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port to bind (default 8000)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    gpu_decode: Annotated[Optional[str], typer.Option(help="on CUDA: nvjpeg (default) or libjpeg (CPU threads: "
                                                      "the CPU path's exact pixels)")] = None,
    engine_process: Annotated[Optional[bool], typer.Option("--engine-process/--no-engine-process",
                                                           help="run the cascade in a process of its own "
                                                           "(env WORKZONE_ENGINE_PROCESS; default off)")] = None,
    http_workers: Annotated[Optional[int], typer.Option(help="HTTP server processes in front of one engine process "
                                                          "(env WORKZONE_HTTP_WORKERS; default 1; more implies "
                                                          "--engine-process)")] = None,
    api_key: Annotated[Optional[List[str]], typer.Option("--api-key", help="accepted API key (repeat for several); "
                                                         "prefer WORKZONE_API_KEYS=k1,k2 to keep keys out of ps")] = None,
    allow_url_fetch: Annotated[Optional[bool], typer.Option("--allow-url-fetch/--no-url-fetch",
                                                            help="accept {'url': ...} inputs (public hosts only)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="most images per cascade batch (default 16)")] = None,
    batch_wait_ms: Annotated[Optional[float], typer.Option(help="longest wait for a batch to fill (default 5)")] = None,
    queue_size: Annotated[Optional[int], typer.Option(help="waiting images before 429 (default 256)")] = None,
    max_body_bytes: Annotated[Optional[int], typer.Option(help="largest request body (default 20 MiB)")] = None,
    default_deadline: Annotated[Optional[float], typer.Option(help="deadline (s) of requests that give none")] = None,
    max_deadline: Annotated[Optional[float], typer.Option(help="cap on requested deadlines (s) (default 60)")] = None,
    shutdown_timeout: Annotated[Optional[float], typer.Option(help="seconds to finish queued work on shutdown")] = None,
    log_level: Annotated[Optional[str], typer.Option(help="critical, error, warning, info, debug")] = None,
) -> None:
    """Serve the pipeline over HTTP: /v1/detect, /v1/detect/batch, /v1/detect/stream, /metrics, /docs."""
    from workzone._optional import require

    require("fastapi", "serve", "workzone serve")
    require("uvicorn", "serve", "workzone serve")
    from workzone.server.app import create_server
    from workzone.server.settings import ServerSettings

    settings = _settings(ServerSettings, {
        "pipeline": pipeline, "host": host, "port": port, "device": device, "gpu_decode": gpu_decode, "engine_process": engine_process,
        "http_workers": http_workers,
        "api_keys": tuple(api_key) if api_key else None, "allow_url_fetch": allow_url_fetch,
        "batch_size": batch_size, "batch_wait_ms": batch_wait_ms, "queue_size": queue_size,
        "max_body_bytes": max_body_bytes, "default_deadline_s": default_deadline, "max_deadline_s": max_deadline,
        "shutdown_timeout_s": shutdown_timeout, "log_level": log_level,
    })
    _refuse_unrunnable(settings.pipeline, "workzone serve")
    if settings.http_workers > 1:
        from workzone.server.workers import run_workers

        raise typer.Exit(run_workers(settings))
    # create_server validates the pipeline file first: a bad file fails here, before binding.
    server = create_server(settings)
    if settings.reuse_port:  # one of several servers on one port (http_workers)
        from workzone.server.workers import reuse_port_socket

        server.run(sockets=[reuse_port_socket(settings.host, settings.port)])
    else:
        server.run()


def _refuse_unrunnable(pipeline: str, what: str) -> None:
    """What `workzone check` would report (missing extras, model files) stops the command before it binds."""
    from workzone.checking import require_runnable
    from workzone.config.loader import load_pipeline_config

    config, path = load_pipeline_config(pipeline)
    require_runnable(config, path.parent, what=what, reference=pipeline)


def miner(
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", "-p", help="built-in pipeline name or YAML file")] = None,
    wallet_name: Annotated[Optional[str], typer.Option("--wallet.name", "--wallet-name", help="coldkey wallet name")] = None,
    wallet_hotkey: Annotated[Optional[str], typer.Option("--wallet.hotkey", "--wallet-hotkey", help="hotkey name")] = None,
    wallet_path: Annotated[Optional[str], typer.Option("--wallet.path", "--wallet-path", help="wallets folder")] = None,
    netuid: Annotated[Optional[int], typer.Option("--netuid", help="subnet uid (default 72)")] = None,
    network: Annotated[Optional[str], typer.Option("--subtensor.network", "--network",
                                                   help="finney, test or local (default finney)")] = None,
    chain_endpoint: Annotated[Optional[str], typer.Option("--subtensor.chain_endpoint", "--chain-endpoint",
                                                          help="explicit subtensor websocket URL")] = None,
    axon_port: Annotated[Optional[int], typer.Option("--axon.port", "--axon-port", help="port (default 8091)")] = None,
    axon_ip: Annotated[Optional[str], typer.Option("--axon.ip", "--axon-ip", help="interface to bind")] = None,
    external_ip: Annotated[Optional[str], typer.Option("--axon.external_ip", "--external-ip",
                                                       help="IP announced on chain")] = None,
    external_port: Annotated[Optional[int], typer.Option("--axon.external_port", "--external-port",
                                                         help="port announced on chain")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    deadline: Annotated[Optional[float], typer.Option(help="seconds to answer within (< 9 - margin) (default 6)")] = None,
    force_validator_permit: Annotated[Optional[bool], typer.Option(
        "--blacklist.force_validator_permit/--blacklist.allow_non_validators",
        help="answer only callers with a validator permit (default on)")] = None,
    allow_non_registered: Annotated[Optional[bool], typer.Option(
        "--blacklist.allow_non_registered/--blacklist.registered_only",
        help="answer callers not registered on the subnet (dangerous) (default off)")] = None,
    model_url: Annotated[Optional[str], typer.Option("--model_url", "--model-url",
                                                     help="returned as ExtendedImageSynapse.model_url")] = None,
) -> None:
    """Run a NATIX StreetVision (SN72) miner: a Bittensor axon answering ImageSynapse challenges."""
    import logging

    from workzone._optional import require

    require("bittensor", "miner", "workzone miner")
    from workzone.miner.axon import run_miner
    from workzone.miner.settings import MinerSettings

    settings = _settings(MinerSettings, {
        "pipeline": pipeline, "wallet_name": wallet_name, "wallet_hotkey": wallet_hotkey, "wallet_path": wallet_path,
        "netuid": netuid, "network": network, "chain_endpoint": chain_endpoint, "axon_port": axon_port,
        "axon_ip": axon_ip, "external_ip": external_ip, "external_port": external_port, "device": device,
        "deadline_s": deadline, "force_validator_permit": force_validator_permit,
        "allow_non_registered": allow_non_registered, "model_url": model_url,
    })
    _refuse_unrunnable(settings.pipeline, "workzone miner")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_miner(settings)
