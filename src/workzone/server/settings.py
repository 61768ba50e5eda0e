"""Server settings: the only reader of environment variables for ``workzone serve``.

Every field can be set by an environment variable named ``WORKZONE_<FIELD>`` (for example
``WORKZONE_PIPELINE=pipelines/fast.yaml``, ``WORKZONE_API_KEYS=key1,key2``) or by the CLI flag of
the same name; flags win. The settings are read once at the entry point and passed down.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from workzone._loop import gil_switch_interval_s
from workzone._memory import MAX_MMAP_THRESHOLD

__all__ = ["ServerSettings", "settings_env"]

_MIN_MMAP_THRESHOLD = 16 * 1024


class ServerSettings(BaseSettings):
    """Everything ``workzone serve`` can be told."""

    model_config = SettingsConfigDict(env_prefix="WORKZONE_", extra="forbid", frozen=True,
                                      protected_namespaces=())

    # -- what to serve ----------------------------------------------------------------------------
    pipeline: str = Field(default="default", description="built-in pipeline name or YAML path")
    device: str = Field(default="cpu", description="compute device for stages that have one (cpu, cuda, cuda:1)")
    gpu_decode: Literal["nvjpeg", "libjpeg"] = Field(
        default="nvjpeg", description="on CUDA, who decodes a batch's JPEGs: nvJPEG (fastest), or libjpeg on CPU "
                                      "threads (the CPU path's exact pixels, so the same decisions)")
    engine_process: bool = Field(
        default=False, description="run the cascade in a process of its own (the engine), so that the HTTP event "
                                   "loop and the device's compute never share a GIL (docs/serving.md)")
    http_workers: int = Field(
        default=1, ge=1, le=64, description="HTTP server processes in front of one engine process (more than 1 "
                                            "implies the engine process): each parses, admits and answers requests, "
                                            "the engine merges their batches")
    engine_address: str | None = Field(
        default=None, description="internal (set by http_workers for its servers): attach to the engine listening "
                                  "at this Unix socket instead of starting one")
    engine_key: str = Field(default="", repr=False, description="internal: the hex key of engine_address")
    reuse_port: bool = Field(default=False, description="bind with SO_REUSEPORT (several servers on one port; set "
                                                        "by http_workers)")
    host: str = Field(default="127.0.0.1", description="interface to bind; 0.0.0.0 exposes the service")
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # -- access -----------------------------------------------------------------------------------
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="accepted keys (X-API-Key or Authorization: Bearer); empty = no auth")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="browser origins allowed by CORS (comma list; '*' for any); empty = CORS off")

    # -- limits -----------------------------------------------------------------------------------
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="largest request body accepted")
    max_image_pixels: int = Field(default=80_000_000, ge=1024, description="largest width*height decoded")
    max_image_side: int = Field(default=4096, ge=0, description="decoded images are downscaled to this long side")
    max_batch_images: int = Field(default=64, ge=1, description="most images in one /v1/detect/batch call")

    # -- admission and read timeouts --------------------------------------------------------------
    max_inflight: int = Field(default=256, ge=1, description="detect requests admitted at once; more are "
                              "refused (429) before their body is read")
    max_held_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024,
                                description="request bodies and decoded pixels held at once; above it new "
                                "requests are refused (429) before their body is read")
    max_rss_bytes: int | None = Field(default=None, ge=0, description="resident memory of the server process at "
                                      "or above which detect requests are refused (429) while any other is held; "
                                      "from max_held_bytes below it, freed memory is given back to the system "
                                      "(malloc_trim, at most once a second); None: the resident size once the "
                                      "pipeline is loaded plus max_held_bytes (at least 256 MiB; admitted work "
                                      "overshoots the ceiling by up to the budget again) on the CPU, no ceiling on "
                                      "a CUDA device; 0: no ceiling, no trims")
    malloc_mmap_threshold: int = Field(default=0, ge=0, le=MAX_MMAP_THRESHOLD,
                                       description="allocations of this many bytes or more get their own memory "
                                       "mapping, returned to the system when freed (glibc); fixed, so glibc does "
                                       "not raise it and serve decoded images from heaps that fragment; costs a "
                                       "page fault per fresh page of each; 0: glibc's own moving threshold")
    max_uploads_per_client: int = Field(default=16, ge=1, description="request bodies one client address (IPv6: "
                                        "its /64) may be sending at once; more are refused (429) before their "
                                        "body is read. Bodies still arriving are not counted as queued work")
    refusal_penalty_s: float = Field(default=1.0, ge=0, le=60, description="a client address with more than 5 "
                                     "requests refused for their images in 10 s (422, or 429 because their memory "
                                     "could not be reserved) has each further request held this long before any "
                                     "work (0: never)")
    refusal_log_per_s: float = Field(default=2.0, ge=0, le=1000, description="most lines a second in the log "
                                     "(logger workzone.access, level warning) about refused detect requests (429, "
                                     "503), one per refusal with its reason and client address; the refusals past "
                                     "it are counted in the next line (0: none)")
    compute_nice: int = Field(default=5, ge=0, le=19, description="how many nice steps below the event loop the "
                              "threads that load and run the stages run (0: the same priority); the loop admits "
                              "and refuses requests, and must not wait for the CPU behind the cascade")
    gil_switch_ms: float | None = Field(default=None, gt=0, le=100, description="how long (ms) a thread may hold "
                                       "Python's GIL while another waits for it (sys.setswitchinterval, for the "
                                       "server process). The torch path's compute thread releases the GIL at each of "
                                       "the ~700 operators a batch dispatches, and each time waits up to this long "
                                       "for an event loop busy with requests to give it back. None: 0.5 ms on a "
                                       "CUDA device (under a loop busy half its time, 4.7x the batches of Python's "
                                       "5 ms: benchmarks/results/served_gap_cuda.md), Python's own (5 ms) otherwise")
    costly_image_s: float = Field(default=0.2, ge=0, le=60, description="cascade seconds per image (measured, "
                                  "smoothed, by client address) above which, when it is also twice what a "
                                  "typical image costs now, a client's images run in the costly lane: one image at "
                                  "a time beside the shared batches, so no other client waits behind them (0: one "
                                  "lane for all)")
    decode_workers: int = Field(default=2, ge=1, le=64, description="images decoded at the same time")
    decode_processes: bool = Field(default=True, description="decode in worker processes that are killed past the "
                                   "CPU budget (false: in threads, which cannot be stopped)")
    image_decode_cpu_s: float = Field(default=1.0, gt=0, le=60, description="most CPU seconds one image's decode "
                                      "may take; past it the decoder is killed and the image refused (422)")
    request_decode_cpu_s: float = Field(default=2.0, gt=0, le=600, description="most CPU seconds the decodes of "
                                        "one request may take together (a batch shares it; past it: 422)")
    heavy_decode_s: float = Field(default=0.2, gt=0, le=60, description="expected decode CPU seconds (from the "
                                  "header) above which an image waits for the costly-image decoder (one process, "
                                  "lower CPU priority), not the ones cheap images use")
    max_decode_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024,
                                  description="most memory one image may need to decode (from its header)")
    header_timeout_s: float = Field(default=10.0, gt=0, le=600, description="time to receive a request's headers")
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024,
                                  description="largest request line + headers (then 431 and close)")
    body_timeout_s: float = Field(default=30.0, gt=0, le=600, description="time to receive the whole body (never "
                                  "past the request's deadline); then 408")

    @property
    def switch_interval_s(self) -> float | None:
        """The GIL switch interval the server sets, in seconds (None: leave Python's)."""
        return gil_switch_interval_s(self.device, self.gil_switch_ms)

    # -- batching and deadlines -------------------------------------------------------------------
    batch_size: int = Field(default=16, ge=1, le=1024, description="most images the cascade runs together")
    batch_wait_ms: float = Field(default=5.0, ge=0, le=1000, description="longest wait for a batch to fill")
    batch_workers: int = Field(default=1, ge=1, le=64, description="batches that may run at once")
    queue_size: int = Field(default=256, ge=1, description="images waiting beyond which requests get 429")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After sent with 429 and 503")
    default_deadline_s: float | None = Field(default=None, gt=0,
                                             description="deadline when a request gives none (None: the pipeline's)")
    max_deadline_s: float = Field(default=60.0, gt=0, description="cap on any requested deadline")

    # -- URL inputs -------------------------------------------------------------------------------
    allow_url_fetch: bool = Field(default=False, description="accept {'url': ...} inputs (public addresses only)")
    url_fetch_timeout_s: float = Field(default=5.0, gt=0, le=60)

    # -- lifecycle --------------------------------------------------------------------------------
    shutdown_timeout_s: float = Field(default=30.0, ge=0, description="time to finish queued work on shutdown")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # Environment variables hold one string; accept "k1,k2" there and lists from code.
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @model_validator(mode="after")
    def _check(self) -> "ServerSettings":
        if self.default_deadline_s is not None and self.default_deadline_s > self.max_deadline_s:
            raise ValueError(f"default_deadline_s ({self.default_deadline_s}) must not exceed "
                             f"max_deadline_s ({self.max_deadline_s})")
        if self.max_rss_bytes and self.max_rss_bytes <= self.max_held_bytes:
            raise ValueError(f"max_rss_bytes ({self.max_rss_bytes}) must be above max_held_bytes "
                             f"({self.max_held_bytes}), which the server itself may fill, or 0 for no ceiling")
        if 0 < self.malloc_mmap_threshold < _MIN_MMAP_THRESHOLD:
            raise ValueError(f"malloc_mmap_threshold must be 0 (glibc's own) or at least {_MIN_MMAP_THRESHOLD} "
                             f"bytes (a mapping per small allocation costs a system call each), got "
                             f"{self.malloc_mmap_threshold}")
        if self.engine_address is not None and not self.engine_key:
            raise ValueError("engine_address needs engine_key (both are set by http_workers for its servers)")
        if any(len(k) < 8 for k in self.api_keys):
            raise ValueError("api_keys: every key must be at least 8 characters long")
        return self


def settings_env(settings: ServerSettings) -> dict[str, str]:
    """``settings`` as the environment variables that make a child ``workzone serve`` read the same settings."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"WORKZONE_{name.upper()}"] = text
    return env
