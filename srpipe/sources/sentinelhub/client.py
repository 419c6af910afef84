"""Sentinel Hub at the edge: SHConfig from a profile or the environment, and a download client that retries and paces.

sentinelhub-py's own client retries 5xx with a fixed x3 backoff and no jitter, ignores Retry-After on a 503, retries a
429 forever and words a 401 as a generic failure; an array of many tasks needs jitter, a per-process rate, a bounded
retry count and errors that name the setting to fix, so `RobustClient` replaces its `_execute_download` only.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass

import requests
from sentinelhub import SentinelHubDownloadClient, SHConfig
from sentinelhub.decoding import decode_sentinelhub_err_msg
from sentinelhub.download.models import DownloadRequest, DownloadResponse

from srpipe.config import ConfigError, SourceConfig
from srpipe.errors import SrpipeError

TEMPORARY = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class SentinelHubError(SrpipeError):
    """Sentinel Hub refused or failed a request; the message names the setting or the fix."""


def sh_config(cfg: SourceConfig) -> SHConfig:
    """SHConfig from profile `source.sh_profile` (and SH_CLIENT_ID / SH_CLIENT_SECRET), timeouts from `cfg`."""
    try:
        config = SHConfig(profile=cfg.sh_profile or None)
    except KeyError as exc:
        raise ConfigError(
            f"sentinelhub profile {cfg.sh_profile!r} (config key 'source.sh_profile') is not in "
            f"{SHConfig.get_config_location()}; create it with `sentinelhub.config --profile {cfg.sh_profile} "
            "--sh_client_id ... --sh_client_secret ...`"
        ) from exc
    if not (config.sh_client_id and config.sh_client_secret):
        raise ConfigError(
            f"no Sentinel Hub credentials: set sh_client_id and sh_client_secret in the sentinelhub profile "
            f"{cfg.sh_profile or 'default-profile'!r} (config key 'source.sh_profile', file "
            f"{SHConfig.get_config_location()}) or the environment variables SH_CLIENT_ID and SH_CLIENT_SECRET"
        )
    config.download_timeout_seconds = cfg.timeout_s
    config.max_download_attempts = cfg.max_retries + 1  # the token request keeps sentinelhub-py's own retries
    config.download_sleep_time = cfg.retry_base_s
    return config


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `max_retries` retries; backoff `base_s * 2**attempt` with full jitter, capped at `max_s` seconds."""

    max_retries: int = 5
    base_s: float = 1.0
    max_s: float = 60.0

    def backoff_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry `attempt` (0-based): Retry-After when the service sent one, else jittered."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_s)
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))


class RateLimiter:
    """At most `per_s` request starts per second in this process, across threads (evenly spaced, no bursts)."""

    def __init__(self, per_s: float) -> None:
        self.interval_s = 1.0 / per_s if per_s > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until this process may start its next request."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval_s
        time.sleep(max(0.0, start - now))

    def defer(self, seconds: float) -> None:
        """Start no request for `seconds` (the service's Retry-After holds for every request of the account)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


_LIMITERS: dict[float, RateLimiter] = {}


def process_limiter(per_s: float) -> RateLimiter:
    """The one limiter of this process for a rate (every source and client in it shares it)."""
    return _LIMITERS.setdefault(per_s, RateLimiter(per_s))


def retry_after_s(response: requests.Response) -> float | None:
    """The Retry-After header in seconds (Sentinel Hub sends milliseconds), or None."""
    value = response.headers.get("Retry-After")
    try:
        return float(value) / 1000 if value is not None else None
    except ValueError:
        return None


class RobustClient(SentinelHubDownloadClient):
    """SentinelHubDownloadClient with bounded, jittered retries, Retry-After, a per-process rate and clear errors."""

    def __init__(self, *, config: SHConfig, source: SourceConfig, **kwargs) -> None:
        super().__init__(config=config, **kwargs)
        self.policy = RetryPolicy(source.max_retries, source.retry_base_s, source.retry_max_s)
        self.limiter = process_limiter(source.requests_per_s)
        self.collection_hint = f"'source.vhr_collection_id' ({source.vhr_collection_id!r}) or 'source.s2_collection'"
        self.profile = source.sh_profile or "default-profile"

    def _single_download_decoded(self, request: DownloadRequest):
        """Decoded response; a cached one that a killed task cut short is deleted and downloaded again."""
        try:
            return super()._single_download_decoded(request)
        except SentinelHubError:
            raise
        except Exception:  # any decoding failure of a cached file: a killed task left it half-written
            _, response_path = request.get_storage_paths()
            if response_path is None or not os.path.exists(response_path):
                raise
            os.remove(response_path)
            return super()._single_download_decoded(request)

    def _execute_download(self, request: DownloadRequest) -> DownloadResponse:
        """Send `request`; retry 429, 5xx and dropped connections; raise SentinelHubError naming the fix."""
        for attempt in range(self.policy.max_retries + 1):
            self.limiter.wait()
            last = attempt == self.policy.max_retries
            try:
                response = self._do_download(request)
            except TEMPORARY as exc:
                if last:
                    raise SentinelHubError(
                        f"the connection to {request.url} was dropped or timed out {attempt + 1} times "
                        f"({type(exc).__name__}); check the network or raise 'source.timeout_s' "
                        "and re-run (finished tiles are kept)"
                    ) from exc
                time.sleep(self.policy.backoff_s(attempt))
                continue
            status = response.status_code
            if status == 429 or status >= 500:
                if last:
                    raise SentinelHubError(
                        f"{request.url} answered {status} {attempt + 1} times: "
                        f"{decode_sentinelhub_err_msg(response)}; lower 'source.requests_per_s' or re-run later"
                    )
                wait_s = retry_after_s(response)
                if wait_s is not None:
                    self.limiter.defer(min(wait_s, self.policy.max_s))
                else:
                    time.sleep(self.policy.backoff_s(attempt))
                continue
            if status >= 400:
                raise self._refusal(request, response)
            return DownloadResponse.from_response(response, request)
        raise AssertionError("unreachable")

    def _refusal(self, request: DownloadRequest, response: requests.Response) -> SentinelHubError:
        """The error for a 4xx answer, naming the setting that fixes it."""
        status, message = response.status_code, decode_sentinelhub_err_msg(response)
        if status in (401, 403):
            return SentinelHubError(
                f"Sentinel Hub refused the credentials ({status} at {request.url}: {message}); check sh_client_id "
                f"and sh_client_secret of the sentinelhub profile {self.profile!r} (config key 'source.sh_profile') "
                "or SH_CLIENT_ID / SH_CLIENT_SECRET, and the account's processing units"
            )
        if status in (400, 404):
            return SentinelHubError(
                f"Sentinel Hub rejected the request ({status} at {request.url}: {message}); "
                f"check {self.collection_hint}, 'source.vhr_bands' and 'source.vhr_units'"
            )
        return SentinelHubError(f"Sentinel Hub answered {status} at {request.url}: {message}")
