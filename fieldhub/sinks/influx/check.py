"""``fieldhub influx check``: can the hub reach the configured InfluxDB, log in, and write?"""

from __future__ import annotations

import time
from typing import Any

from fieldhub.sinks.influx.http import InfluxWriteError, V1Transport
from fieldhub.sinks.influx.writer import InfluxConfig, make_transport

CHECK_MEASUREMENT = "fieldhub_check"


def _step(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail}


def _diagnose_write(exc: InfluxWriteError, cfg: InfluxConfig) -> tuple[str, str]:
    who = cfg.username if cfg.mode == "v1" else "the token"
    where = f"database {cfg.database!r}" if cfg.mode == "v1" else f"bucket {cfg.bucket!r}"
    if exc.status == 401:
        return (f"credentials refused: {who} could not log in ({exc.server_message}); check "
                f"[influx] {'username/password' if cfg.mode == 'v1' else 'token'}",
                "认证失败：用户名/密码或令牌错误")
    if exc.status == 403:
        return (f"no write permission: {who} may not write to {where} ({exc.server_message})",
                "没有写入权限")
    if exc.status == 404:
        return (f"{where} not found ({exc.server_message}); create it or fix the name",
                "数据库/存储桶不存在")
    if exc.status == 0:
        return f"server unreachable: {exc}", "无法连接服务器"
    return f"write refused: {exc}", "写入被拒绝"


def check(cfg: InfluxConfig, hub_id: str = "hub", *, write: bool = True) -> dict[str, Any]:
    """Run the checks in order, stopping at the first failure; returns a JSON-able report."""
    out: dict[str, Any] = {"ok": False, "mode": cfg.mode, "url": cfg.url, "steps": [],
                           "target": cfg.database if cfg.mode == "v1" else cfg.bucket}
    steps: list[dict[str, Any]] = out["steps"]
    if not cfg.url:
        out["diagnosis"] = "no InfluxDB configured: set [influx] url (and mode, bucket or database)"
        out["diagnosis_zh"] = "未配置 InfluxDB：请设置 [influx] url"
        return out
    transport = make_transport(cfg)
    try:
        started = time.monotonic()
        try:
            info = transport.ping()
        except InfluxWriteError as exc:
            steps.append(_step("connect", False, str(exc)))
            out["diagnosis"] = f"server unreachable at {cfg.url}: {exc.server_message}"
            if "TLS" in exc.server_message or "HTTPS" in exc.server_message:
                out["diagnosis_zh"] = f"无法连接 {cfg.url}：TLS 证书不受信任或 http/https 不匹配"
            else:
                out["diagnosis_zh"] = f"无法连接 {cfg.url}：服务器未运行、端口错误或链路中断"
            return out
        rtt = (time.monotonic() - started) * 1000
        out["server_version"] = info.get("version", "")
        steps.append(_step("connect", True, f"{cfg.url} answers in {rtt:.0f} ms"
                           + (f", version {info['version']}" if info.get("version") else "")))
        if isinstance(transport, V1Transport):
            try:
                transport.query("SHOW DATABASES")
                steps.append(_step("credentials", True,
                                   f"logged in as {cfg.username!r}" if cfg.username else
                                   "no authentication configured, server accepted"))
            except InfluxWriteError as exc:
                if exc.status in (401, 403) or "authorization" in exc.server_message.lower():
                    if exc.status == 403 and cfg.username:
                        # a non-admin user may not list databases; the write step decides
                        steps.append(_step("credentials", True,
                                           f"logged in as {cfg.username!r} (not an admin)"))
                    else:
                        steps.append(_step("credentials", False, str(exc)))
                        msg, zh = _diagnose_write(InfluxWriteError(exc.server_message, status=401), cfg)
                        out["diagnosis"], out["diagnosis_zh"] = msg, zh
                        return out
                else:
                    steps.append(_step("credentials", False, str(exc)))
                    out["diagnosis"], out["diagnosis_zh"] = f"query refused: {exc}", "查询被拒绝"
                    return out
        if write:
            line = f'{CHECK_MEASUREMENT},hub={hub_id} ok=1i {time.time_ns()}'.encode()
            try:
                transport.post(line)
            except InfluxWriteError as exc:
                steps.append(_step("write", False, str(exc)))
                out["diagnosis"], out["diagnosis_zh"] = _diagnose_write(exc, cfg)
                return out
            steps.append(_step("write", True, f"wrote one point to measurement {CHECK_MEASUREMENT!r} "
                                              f"in {transport.target}"))
        out["ok"] = True
        out["diagnosis"] = f"InfluxDB at {cfg.url} ({cfg.mode}) is reachable and writable"
        out["diagnosis_zh"] = "InfluxDB 可连接、可写入"
        return out
    finally:
        transport.close()
