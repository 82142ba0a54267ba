"""The UI's routes (Starlette): four pages, their JSON, the live event stream, labels and control.

Pages are static HTML + one script each (``static/``, no build step); they poll ``/api/*``.
Every answer is counted by route and status (``remembrall_ui_requests_total``); refused input
gets a JSON ``{"error": ...}`` that says what to send instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles

from remembrall.monitoring import metrics as m
from remembrall.pipeline.control import PipelineUnreachable, push_message
from remembrall.pipeline.messages import Message
from remembrall.ui.auth import COOKIE, Refused, check_same_origin, check_token
from remembrall.ui.labeldesk import LabelDesk
from remembrall.ui.learning import LearningLog
from remembrall.ui.live import LiveFeed
from remembrall.ui.overview import MetricsView, overview, read_status
from remembrall.ui.pages import PAGES, STATIC, render

log = logging.getLogger(__name__)

#: control verbs the UI may send to retrain (``remembrall ctl`` has the same and more)
CONTROL_VERBS = ("rollback", "sleep")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'",
}


class UIState:
    """What the routes read and act on; built by :class:`~remembrall.ui.server.UIServer`."""

    def __init__(self, *, token: str, sock_dir: Path, out_dir: Path, streams: dict[str, str], metrics: MetricsView,
                 learning: LearningLog, desk: LabelDesk, live: LiveFeed, grafana_url: str | None,
                 max_request_bytes: int, live_fps: float) -> None:
        self.token, self.sock_dir, self.out_dir, self.streams = token, sock_dir, out_dir, streams
        self.metrics, self.learning, self.desk, self.live = metrics, learning, desk, live
        self.grafana_url, self.max_request_bytes, self.live_fps = grafana_url, max_request_bytes, live_fps


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request, limit: int) -> Any:
    """The request's JSON body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Refused(413, f"request body over {limit} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise Refused(415, "send the body as application/json")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"request body over {limit} bytes")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, f"the body is not valid JSON: {exc}") from None


def _authorize(request: Request, state: UIState) -> None:
    check_same_origin(request.headers.get("host"), request.headers.get("origin"),
                      request.headers.get("sec-fetch-site"))
    check_token(state.token, request.headers.get("authorization"), request.cookies.get(COOKIE))


def build_app(state: UIState) -> Starlette:
    """The ASGI app of one running pipeline's UI."""
    pages = {page.route: render(page).encode("utf-8") for page in PAGES}

    async def page(request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None:  # the start-up URL: trade the token for a cookie, drop it from the address bar
            try:
                check_token(state.token, None, token)
            except Refused as exc:
                return _error(exc.status, exc.message)
            response: Response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return response
        return Response(pages[request.url.path], media_type="text/html; charset=utf-8")

    async def api_overview(request: Request) -> Response:
        data = await asyncio.to_thread(overview, read_status(state.sock_dir), state.metrics, state.streams,
                                       state.grafana_url)
        await asyncio.to_thread(state.learning.refresh)
        data["serving"] = state.learning.serving()
        data["authorized"] = _is_authorized(request)
        return JSONResponse(data)

    async def api_learning(request: Request) -> Response:
        await asyncio.to_thread(state.learning.refresh)
        return JSONResponse(state.learning.summary())

    async def api_samples(request: Request) -> Response:
        try:
            limit = max(1, min(200, int(request.query_params.get("limit", "50"))))
        except ValueError:
            return _error(400, "limit must be a number")
        data = await asyncio.to_thread(state.desk.samples, limit)
        data["authorized"] = _is_authorized(request)
        return JSONResponse(data)

    async def sample_image(request: Request) -> Response:
        path = state.desk.image_path(request.path_params["name"])
        return FileResponse(path, media_type="image/png")

    async def post_label(request: Request) -> Response:
        _authorize(request, state)
        body = await _json_body(request, state.max_request_bytes)
        return JSONResponse(await asyncio.to_thread(state.desk.submit, body), status_code=202)

    async def post_undo(request: Request) -> Response:
        _authorize(request, state)
        return JSONResponse(state.desk.undo())

    async def post_control(request: Request) -> Response:
        _authorize(request, state)
        verb = request.path_params["verb"]
        if verb not in CONTROL_VERBS:
            raise Refused(404, f"unknown control verb {verb!r}; the UI sends {', '.join(CONTROL_VERBS)}")
        body = await _json_body(request, state.max_request_bytes) if request.headers.get("content-length") not in (
            None, "0") else {}
        modality = body.get("modality") if isinstance(body, dict) else None
        if modality is not None and modality not in ("vision", "text"):
            raise Refused(400, "modality must be 'vision' or 'text'")
        fields = {"modality": modality} if modality else {}
        try:
            await asyncio.to_thread(push_message, state.sock_dir, "retrain.control", Message(verb, fields=fields))
        except PipelineUnreachable as exc:
            raise Refused(409, f"the pipeline has no retrain stage taking commands: {exc}") from None
        return JSONResponse({"sent": verb, **fields}, status_code=202)

    async def live_events(request: Request) -> Response:
        viewer = state.live.join()

        async def events():  # noqa: ANN202 - an async generator of SSE lines
            try:
                yield f"retry: 2000\nevent: hello\ndata: {json.dumps({'live_fps': state.live_fps})}\n\n"
                while True:
                    batch = await viewer.next(timeout=10.0)
                    if batch is None or await request.is_disconnected():
                        return
                    if not batch:
                        yield ": keep-alive\n\n"  # also how a vanished client is noticed
                    for event in batch:
                        yield f"data: {json.dumps(event)}\n\n"
            finally:
                state.live.leave(viewer)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def _is_authorized(request: Request) -> bool:
        try:
            check_token(state.token, request.headers.get("authorization"), request.cookies.get(COOKIE))
        except Refused:
            return False
        return True

    routes = [Route(p.route, page, methods=["GET"]) for p in PAGES]
    routes += [
        Route("/api/overview", api_overview, methods=["GET"]),
        Route("/api/learning", api_learning, methods=["GET"]),
        Route("/api/samples", api_samples, methods=["GET"]),
        Route("/api/samples/{name}/image", sample_image, methods=["GET"]),
        Route("/api/labels", post_label, methods=["POST"]),
        Route("/api/labels/undo", post_undo, methods=["POST"]),
        Route("/api/control/{verb}", post_control, methods=["POST"]),
        Route("/api/live/events", live_events, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return _error(exc.status, exc.message)

    app = Starlette(routes=routes, exception_handlers={Refused: refused})
    app.add_middleware(CountAndGuard, routes=routes)
    return app


class CountAndGuard:
    """ASGI middleware: security headers on every answer, and every answer counted by route template
    and status (a plain ASGI wrapper, so the live event stream passes through untouched)."""

    def __init__(self, app: Any, routes: list[Any]) -> None:
        self.app, self.routes = app, routes

    def _route(self, scope: dict[str, Any]) -> str:
        for r in self.routes:
            match, _ = r.matches(scope)
            if match == Match.FULL:
                return getattr(r, "path", "other") or "other"
        return "other"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, status = self._route(scope), 500

        async def send_guarded(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers.setdefault(k, v)
            await send(message)

        try:
            await self.app(scope, receive, send_guarded)
        finally:
            m.UI_REQUESTS.labels(route, str(status)).inc()
