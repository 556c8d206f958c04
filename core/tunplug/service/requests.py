"""The tunnel service's answers: one request from a GUI in, one reply out.

Who calls it: each :class:`~tunplug.service.connection.Connection` of
:class:`tunplug.service.server.TunnelService` hands every decoded request to
:meth:`RequestHandler.dispatch`. ``Hello`` negotiates the protocol version; every other request
needs it first. What changes the tunnel goes to :class:`~tunplug.service.session.TunnelSession`;
what a request may not do (``Connect`` while a token file manages the tunnel, while stopping,
while connected) is refused here with the protocol's error codes. A :class:`TunplugError` is
answered as ``unavailable``; any other exception is a bug, logged and answered as ``internal``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from tunplug import __version__, token
from tunplug.exceptions import ConfigError, TunplugError
from tunplug.headless.sources import Source
from tunplug.service import protocol as p
from tunplug.service.connection import Connection
from tunplug.service.session import TunnelSession

#: The service logs under one name, as before it was split into modules (operators filter on it).
log = logging.getLogger("tunplug.service.server")


class RequestHandler:
    """Answers the requests of every connection, one at a time per connection."""

    def __init__(self, session: TunnelSession, *, device_id: str, log_file: Path | None) -> None:
        self.session = session
        self.device_id = device_id
        self.log_file = log_file

    async def dispatch(self, connection: Connection, request: p.Request) -> bool:
        """Handle one request; False when the connection must close after the reply."""
        log.debug("request %s from %s", request.type, connection.credentials.describe())
        if isinstance(request, p.Hello):
            return self._hello(connection, request)
        if not connection.greeted:
            connection.post(
                p.Error(id=request.id, code=p.ErrorCode.HELLO_REQUIRED, message="send Hello first")
            )
            return True
        try:
            reply = await self._answer(connection, request)
        except TunplugError as exc:
            reply = p.Error(id=request.id, code=p.ErrorCode.UNAVAILABLE, message=str(exc))
        except Exception as exc:  # a bug: answered and logged, the service goes on
            log.exception("%s request failed", request.type)
            reply = p.Error(
                id=request.id,
                code=p.ErrorCode.INTERNAL,
                message=f"{request.type} failed: {exc.__class__.__name__}",
            )
        connection.post(reply)
        return True

    def _hello(self, connection: Connection, request: p.Hello) -> bool:
        if request.protocol_version != p.PROTOCOL_VERSION:
            connection.post(
                p.Error(
                    id=request.id,
                    code=p.ErrorCode.UNSUPPORTED_VERSION,
                    message=f"this service speaks protocol version {p.PROTOCOL_VERSION}, "
                    f"not {request.protocol_version}",
                )
            )
            return False
        connection.greeted = True
        log.info("client %r connected (%s)", request.client, connection.credentials.describe())
        connection.post(
            p.Welcome(
                id=request.id,
                protocol_version=p.PROTOCOL_VERSION,
                service_version=__version__,
                device_id=self.device_id,
            )
        )
        return True

    async def _answer(self, connection: Connection, request: p.Request) -> p.Message:
        if isinstance(request, p.Status):
            return p.StatusReply(id=request.id, status=self.session.status())
        if isinstance(request, p.Subscribe):
            connection.subscribed = True
            return p.Ok(id=request.id)
        if isinstance(request, p.Connect):
            return self._connect(request)
        if isinstance(request, p.Disconnect):
            return await self._disconnect(request)
        if isinstance(request, p.SetDnsControl):
            return self._set_dns_control(request)
        if isinstance(request, p.SetInternetResource):
            note = await self.session.set_internet_resource(request.active)
            return p.Ok(id=request.id, message=note)
        if isinstance(request, p.ClearLogs):
            return self._clear_logs(request)
        raise AssertionError(request)

    # -- requests ------------------------------------------------------------------------------
    def _managed_refusal(self, request: p.Connect | p.Disconnect) -> p.Error | None:
        session = self.session
        if not session.managed_by_token_file():
            return None
        where = (
            "the TUNPLUG_TOKEN variable"
            if session.token_from_environment
            else f"the token file {session.source.token_path}"
        )
        return _refusal(
            request.id,
            p.ErrorCode.MANAGED_BY_TOKEN_FILE,
            f"{request.type} refused: this tunnel is managed by {where}, which takes "
            "precedence over GUIs; remove it and restart the service to connect from a GUI "
            "(Status and Subscribe still work)",
        )

    def _connect(self, request: p.Connect) -> p.Message:
        refusal = self._managed_refusal(request)
        if refusal:
            return refusal
        session = self.session
        if session.stopping:
            return _refusal(request.id, p.ErrorCode.SHUTTING_DOWN, "the service is stopping")
        if session.tunnel is not None:
            state = "connected" if session.tunnel.ready else "connecting"
            return _refusal(
                request.id, p.ErrorCode.ALREADY_CONNECTED, f"already {state}: Disconnect first"
            )
        try:
            client = token.decode(request.token, "token")
            loaded = Source.from_token(client, "a GUI")
        except ConfigError as exc:
            return _refusal(request.id, p.ErrorCode.INVALID_TOKEN, str(exc))
        session.start(loaded, "gui")
        return p.Ok(id=request.id, message="connecting")

    async def _disconnect(self, request: p.Disconnect) -> p.Message:
        refusal = self._managed_refusal(request)
        if refusal:
            return refusal
        if self.session.tunnel is None:
            return _refusal(request.id, p.ErrorCode.NOT_CONNECTED, "no tunnel is running")
        await self.session.take_down()
        return p.Ok(id=request.id, message="disconnected")

    def _set_dns_control(self, request: p.SetDnsControl) -> p.Message:
        reason = self.session.set_dns_control(request.mode)
        if reason:
            return _refusal(request.id, p.ErrorCode.UNAVAILABLE, reason)
        note = "applies from the next Connect" if self.session.tunnel is not None else None
        return p.Ok(id=request.id, message=note)

    def _clear_logs(self, request: p.ClearLogs) -> p.Message:
        if self.log_file is None:
            return p.Ok(id=request.id, message="no log directory: logs go to stderr only")
        removed = 0
        for path in self.log_file.parent.glob(self.log_file.name + ".*"):
            if path.name.removeprefix(self.log_file.name + ".").isdigit():
                path.unlink(missing_ok=True)
                removed += 1
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.log_file, 0)  # the handler appends: it goes on at the new end
        log.info("logs cleared by a client (%d rotated file(s) removed)", removed)
        return p.Ok(id=request.id, message=f"log file emptied, {removed} rotated file(s) removed")


def _refusal(request_id: int, code: p.ErrorCode, message: str) -> p.Error:
    return p.Error(id=request_id, code=code, message=message)
