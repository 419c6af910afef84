"""Signed asset hrefs for archives that need them (`source.stac_sign`): Planetary Computer's SAS tokens.

GET `<stac_token_api>/<collection>` answers {"msft:expiry": "...Z", "token": "se=...&sig=..."}; an href is read as
`href?token`. Tokens are kept in-process per (token API, collection), shared by the tiles one process downloads,
and fetched again 5 minutes (or half their lifetime, when shorter) before they expire. The token never leaves
memory: messages pass through `redact`, EOPatches record the unsigned hrefs.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

from srpipe.config import ConfigError, SourceConfig
from srpipe.errors import SrpipeError
from srpipe.sources.stac.search import http_retry

REFRESH_S = 300.0  # fetch a new token this long before the old one expires
_SAS_QUERY = re.compile(r"\?[^\s'\"]*\bsig=[^\s'\"]*")


class TokenError(SrpipeError):
    """The token endpoint failed or refused; the message names the config keys to check."""


@dataclass(frozen=True)
class SasToken:
    """A SAS token (a query string without '?') and its expiry and fetch times (UTC)."""

    token: str
    expiry: dt.datetime
    fetched: dt.datetime

    def fresh(self, now: dt.datetime) -> bool:
        """Whether to use it at `now`: before expiry less REFRESH_S (or less half its lifetime, when shorter)."""
        margin_s = min(REFRESH_S, (self.expiry - self.fetched).total_seconds() / 2)
        return now < self.expiry - dt.timedelta(seconds=margin_s)


_TOKENS: dict[tuple[str, str], SasToken] = {}  # a process downloads many tiles, each with its own source object
_LOCK = threading.Lock()


def redact(text: str) -> str:
    """`text` with any SAS query string ('?...sig=...') replaced by '?<sas-token>'."""
    return _SAS_QUERY.sub("?<sas-token>", text)


class Signer:
    """Hrefs as they are (`source.stac_sign = ""`); the base of signers."""

    signs = False

    def sign(self, href: str) -> str:
        """The href to read."""
        return href

    def renew(self) -> None:
        """Forget the cached token (the archive refused it)."""


class SasSigner(Signer):
    """Hrefs of `collection` with its SAS token from `cfg.stac_token_api` appended."""

    signs = True

    def __init__(self, cfg: SourceConfig, collection: str) -> None:
        self.cfg, self.collection = cfg, collection
        self.key = (cfg.stac_token_api.rstrip("/"), collection)

    def sign(self, href: str) -> str:
        """`href` + '?' (or '&' when it has a query) + the collection's current token."""
        return href + ("&" if "?" in href else "?") + self.token()

    def token(self) -> str:
        """The collection's token: the cached one while fresh, else a new one from the endpoint."""
        with _LOCK:
            held = _TOKENS.get(self.key)
            if held is None or not held.fresh(dt.datetime.now(dt.UTC)):
                held = _TOKENS[self.key] = fetch_token(self.cfg, self.collection)
            return held.token

    def renew(self) -> None:
        """Forget the cached token, so the next `sign` fetches one."""
        with _LOCK:
            _TOKENS.pop(self.key, None)


def fetch_token(cfg: SourceConfig, collection: str) -> SasToken:
    """A new token of `collection` from `cfg.stac_token_api` (429/5xx and dropped connections retried, as searches)."""
    url = f"{cfg.stac_token_api.rstrip('/')}/{collection}"
    retry = http_retry(cfg)
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        try:
            response = session.get(url, timeout=cfg.timeout_s)
            response.raise_for_status()
            body = response.json()
            expiry = dt.datetime.fromisoformat(body["msft:expiry"].replace("Z", "+00:00"))
            return SasToken(body["token"].lstrip("?"), expiry, dt.datetime.now(dt.UTC))
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            raise TokenError(
                f"no SAS token for collection {collection!r} from {url} ({type(exc).__name__}: {redact(str(exc))}); "
                "check 'source.stac_token_api' and 'source.stac_collection', or set 'source.stac_sign' = \"\" for "
                "an archive whose assets need no signing; or re-run later (finished tiles are kept)"
            ) from None  # the cause may quote the token


def check_sign_settings(cfg: SourceConfig) -> None:
    """ConfigError naming the key when signing is asked for without an http(s) token endpoint."""
    if cfg.stac_sign and not cfg.stac_token_api.startswith(("http://", "https://")):
        raise ConfigError(
            f"config key 'source.stac_token_api' = {cfg.stac_token_api!r} must be an http(s) URL (Planetary "
            "Computer's: https://planetarycomputer.microsoft.com/api/sas/v1/token) when 'source.stac_sign' is set"
        )


def signer_for(cfg: SourceConfig) -> Signer:
    """The signer `cfg.stac_sign` asks for, over the S2 collection `cfg.stac_collection`."""
    check_sign_settings(cfg)
    return SasSigner(cfg, cfg.stac_collection) if cfg.stac_sign == "planetary-computer" else Signer()
