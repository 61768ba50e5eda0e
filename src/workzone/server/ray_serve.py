"""The ``workzone serve`` HTTP app behind Ray Serve: replicas across a Ray cluster (extra ``ray-serve``).

Each replica builds the same FastAPI app as ``workzone serve`` (:func:`workzone.server.app.create_app`)
in its own process, with its own cascade and micro-batcher, so batching works per replica exactly
as in ``workzone serve``; Ray Serve's proxy spreads requests over the replicas::

    serve run workzone.server.ray_serve:app_builder pipeline=default num_replicas=2 num_cpus=2 batch_size=16

Keys other than ``num_replicas``, ``num_cpus`` and ``num_gpus`` are ``ServerSettings`` fields
(the ``workzone serve`` flags), validated on the driver so a bad key fails before any replica starts.
"""

from __future__ import annotations

from typing import Any

from workzone._optional import require
from workzone.errors import ConfigError

__all__ = ["app_builder"]

_REPLICA_KEYS = ("num_replicas", "num_cpus", "num_gpus")


def app_builder(args: dict[str, Any]) -> Any:
    """Ray Serve application builder (``serve run workzone.server.ray_serve:app_builder key=value ...``).

    Args:
        args: ``num_replicas`` (default 1), ``num_cpus`` per replica (default 1), ``num_gpus`` per
            replica (default 0), and any ``ServerSettings`` field (``pipeline``, ``batch_size``, ...).

    Returns:
        The bound deployment, for ``serve.run``.

    Raises:
        ConfigError: a key is not a setting, or a value is invalid.
        MissingExtraError: Ray Serve is not installed.
    """
    serve = require("ray.serve", "ray-serve", "Ray Serve")
    from pydantic import ValidationError

    from workzone.server.settings import ServerSettings

    args = dict(args)
    replica = {k: float(args.pop(k)) for k in _REPLICA_KEYS if k in args}
    try:
        ServerSettings(**args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"ray_serve app_builder: {problems}") from exc

    def build_app() -> Any:  # runs in each replica: one cascade per replica
        from workzone.server.app import create_app

        return create_app(ServerSettings(**args))

    deployment = serve.deployment(
        serve.ingress(build_app)(), name="workzone", num_replicas=int(replica.get("num_replicas", 1)),
        ray_actor_options={"num_cpus": replica.get("num_cpus", 1.0), "num_gpus": replica.get("num_gpus", 0.0)})
    return deployment.bind()
