"""The two ways to hand line protocol to an InfluxDB server: the v2 write API (influxdb-client)
and the v1 ``/write`` endpoint; both raise the same errors, so the sink treats them alike."""

from __future__ import annotations

import base64
import gzip
import urllib.parse
from typing import Any, Protocol

import urllib3

from fieldhub.core.errors import TransportError


class InfluxWriteError(TransportError):
    """A write the server did not take. ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0, retry_after: float | None = None) -> None:
        self.status, self.retry_after = status, retry_after
        if len(message) > 1000:  # InfluxDB quotes the whole offending line
            message = message[:1000] + "…"
        self.server_message = message
        super().__init__(f"HTTP {status}: {message}" if status else message)

    @property
    def rejected(self) -> bool:
        """The data itself was refused (bad point, type conflict, too large): split, don't retry."""
        return self.status in (400, 413, 422)

    @property
    def auth(self) -> bool:
        return self.status in (401, 403)


class Transport(Protocol):
    """Posts one body of newline-separated line protocol; returns only once the server took it."""

    mode: str
    target: str

    def post(self, body: bytes) -> None: ...

    def ping(self) -> dict[str, str]: ...

    def close(self) -> None: ...


def _message(body: bytes | str | None, headers: Any = None) -> str:
    """The server's own words: InfluxDB puts them in X-Influxdb-Error and a JSON body."""
    if headers is not None:
        hdr = headers.get("X-Influxdb-Error") or headers.get("x-influxdb-error")
        if hdr:
            return str(hdr)
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        import orjson

        data = orjson.loads(text)
        if isinstance(data, dict):
            return str(data.get("error") or data.get("message") or text)
    except ValueError:
        pass
    return text.strip()[:500]


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


class V1Transport:
    """InfluxDB 1.x ``POST /write?db=..&rp=..&precision=ns`` with basic auth and optional gzip."""

    mode = "v1"

    def __init__(self, url: str, database: str, *, retention_policy: str = "", username: str = "",
                 password: str = "", gzip_level: int = 0, timeout: float = 10.0,
                 pool_size: int = 4, create_database: bool = False, tls_ca: str = "",
                 tls_verify: bool = True) -> None:
        self.base = url.rstrip("/")
        self.database = database
        self.target = database + (f".{retention_policy}" if retention_policy else "")
        params = {"db": database, "precision": "ns"}
        if retention_policy:
            params["rp"] = retention_policy
        self.write_url = f"{self.base}/write?{urllib.parse.urlencode(params)}"
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if username:
            cred = base64.b64encode(f"{username}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {cred}"
        self.gzip_level = gzip_level
        if gzip_level:
            self.headers["Content-Encoding"] = "gzip"
        self.create_database = create_database
        self.pool = urllib3.PoolManager(num_pools=2, maxsize=pool_size, retries=False,
                                        timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout),
                                        **tls_options(tls_ca, tls_verify))

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        try:
            return self.pool.request(method, url, body=body, headers=headers or self.headers)
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxWriteError(f"{self.base}: {_describe_conn(exc)}") from None

    def post(self, body: bytes) -> None:
        data = gzip.compress(body, self.gzip_level) if self.gzip_level else body
        resp = self.request("POST", self.write_url, data)
        if resp.status in (200, 204):
            return
        msg = _message(resp.data, resp.headers)
        if resp.status == 404 and "database not found" in msg and self.create_database:
            self.query(f'CREATE DATABASE "{self.database}"')
            return self.post(body)
        raise InfluxWriteError(msg or resp.reason or "error", status=resp.status,
                               retry_after=_retry_after(resp.headers))

    def query(self, q: str) -> Any:
        """Run InfluxQL (``/query``); raises InfluxWriteError with the server's message."""
        headers = {k: v for k, v in self.headers.items() if k == "Authorization"}
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        resp = self.request("POST", f"{self.base}/query",
                            urllib.parse.urlencode({"q": q}).encode(), headers)
        msg = _message(resp.data, resp.headers)
        if resp.status != 200:
            raise InfluxWriteError(msg, status=resp.status)
        import orjson

        data = orjson.loads(resp.data)
        for result in data.get("results", []):
            if "error" in result:
                raise InfluxWriteError(result["error"], status=400)
        return data

    def ping(self) -> dict[str, str]:
        return ping(self.base, self.pool)

    def close(self) -> None:
        self.pool.clear()


class V2Transport:
    """The v2 write API through ``influxdb-client`` (InfluxDB 2.x/3.x, 1.8+ compat, VictoriaMetrics)."""

    mode = "v2"

    def __init__(self, url: str, token: str, org: str, bucket: str, *, gzip_level: int = 0,
                 timeout: float = 10.0, pool_size: int = 4, tls_ca: str = "",
                 tls_verify: bool = True) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.service.write_service import WriteService

        self.base = url.rstrip("/")
        self.org, self.bucket = org, bucket
        self.target = f"{org}/{bucket}" if org else bucket
        # gzip is done here at our level (the client's own gzip is level 9: slow for big batches).
        # The client takes None for "no token/org" but declares them ``str = None``: hence the ignore.
        self.client = InfluxDBClient(url=self.base, token=token or None, org=org or None,  # type: ignore[arg-type]
                                     timeout=int(timeout * 1000), enable_gzip=False,
                                     retries=False, connection_pool_maxsize=pool_size,
                                     verify_ssl=tls_verify, ssl_ca_cert=tls_ca or None)
        self._ping_pool = urllib3.PoolManager(retries=False, timeout=min(timeout, 5.0),
                                              **tls_options(tls_ca, tls_verify))
        self.service = WriteService(self.client.api_client)
        self.gzip_level = gzip_level
        self.timeout = timeout

    def post(self, body: bytes) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        extra = {}
        if self.gzip_level:
            body = gzip.compress(body, self.gzip_level)
            extra["content_encoding"] = "gzip"
        try:
            self.service.post_write(org=self.org or "-", bucket=self.bucket, body=body,
                                    precision=WritePrecision.NS,
                                    content_type="text/plain; charset=utf-8", **extra)
        except ApiException as exc:
            raise InfluxWriteError(_message(exc.body, exc.headers) or str(exc.reason), status=exc.status or 0,
                                   retry_after=_retry_after(exc.headers)) from None
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxWriteError(f"{self.base}: {_describe_conn(exc)}") from None

    def ping(self) -> dict[str, str]:
        return ping(self.base, self._ping_pool)

    def close(self) -> None:
        self.client.close()


def tls_options(ca: str, verify: bool) -> dict[str, Any]:
    """urllib3 pool options for https: our CA file, or the system's; or no verification."""
    if not verify:
        return {"cert_reqs": "CERT_NONE"}
    return {"cert_reqs": "CERT_REQUIRED", **({"ca_certs": ca} if ca else {})}


def ping(base: str, pool: urllib3.PoolManager) -> dict[str, str]:
    """GET /ping (InfluxDB 1.x/2.x/3.x and VictoriaMetrics answer it); the server's version if told."""
    try:
        resp = pool.request("GET", f"{base}/ping", headers={})
    except urllib3.exceptions.HTTPError as exc:
        raise InfluxWriteError(_describe_conn(exc)) from None
    if resp.status not in (200, 204):
        raise InfluxWriteError(_message(resp.data, resp.headers) or "unexpected answer to /ping",
                               status=resp.status)
    return {"version": resp.headers.get("X-Influxdb-Version", ""),
            "build": resp.headers.get("X-Influxdb-Build", "")}


def _describe_conn(exc: BaseException) -> str:
    """A connection failure in plain words (refused, timed out, name not resolved...)."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    low = text.lower()
    if "certificate verify failed" in low or "certificate_verify_failed" in low:
        return ("TLS certificate not trusted (set [influx] tls_ca to the server's CA file, "
                f"or tls_verify = false): {text[:200]}")
    if "wrong version number" in low or "ssl" in low and "record layer" in low:
        return "TLS handshake failed (https to a plain-http port, or the reverse?)"
    if "refused" in low:
        return "connection refused (server down or wrong port)"
    if "timed out" in low or "timeout" in low:
        return "timed out (server slow or link down)"
    if "name or service not known" in low or "nodename nor servname" in low or "resolution" in low:
        return "host name not resolved"
    if "reset" in low or "aborted" in low or "remote end closed" in low or "protocol" in low:
        return "connection lost during the request"
    return text[:300]
