"""The ASGI app (starlette): the page, its static files, and one WebSocket per tab.

Doors, each checked before a tab gets a conversation: the Host header must name this server (loopback names unless
`--allow-remote`: that stops DNS rebinding), the WebSocket's Origin must be the page's own, and with a token (always
with `--allow-remote`) the page and the socket must present it. Beyond `max_conversations` a tab is told the server
is busy. A tab that misbehaves (bad frames, oversized messages, a dropped socket) loses its own connection only:
its conversation thread is ended and joined, its uploads removed, its slot freed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

import numpy as np

from ..generate import GenerationOptions
from ..model import OmniModel
from .dialogue import Command, Dialogue
from .protocol import CLIP, IMAGE, MIC, Limits, ProtocolError, UploadRefused, audio_frame, command, mic_pcm, upload

log = logging.getLogger(__name__)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeOptions:
    gen: GenerationOptions
    seed: int | None = None
    context: int = 2048
    max_conversations: int = 2
    token: str | None = None  # required from the page and the socket when set
    allow_remote: bool = False
    voice: str | None = None  # each tab starts with it
    limits: Limits = field(default_factory=Limits)


def _host_name(host_header: str) -> str:
    return (urlsplit(f"//{host_header}").hostname or "").lower()


def page_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "worklets.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


def create_app(model: OmniModel, opts: ServeOptions):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    state = {"open": 0}  # conversations; the event loop is the only writer

    def door(headers, query) -> str | None:
        """Why this request may not come in, or None."""
        host = headers.get("host", "")
        if not opts.allow_remote and _host_name(host) not in LOOPBACK_NAMES:
            return f"host {host!r} is not this machine's loopback name"
        if opts.token is not None and not secrets.compare_digest(query.get("token", ""), opts.token):
            return "this server needs its token: open the address omni-run printed (…?token=…)"
        return None

    async def page(request):
        why = door(request.headers, request.query_params)
        if why:
            return PlainTextResponse(why, status_code=403)
        name = request.path_params.get("name", "index.html")
        if name not in STATIC:
            return PlainTextResponse("not found", status_code=404)
        return Response(page_file(name), media_type=STATIC[name],
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                 "Content-Security-Policy": "default-src 'self'; connect-src 'self'; "
                                                            "img-src 'self' blob: data:; media-src 'self' blob:"})

    async def socket(ws: WebSocket):
        why = door(ws.headers, ws.query_params)
        origin = ws.headers.get("origin", "")
        if why is None and origin.lower() not in (f"http://{ws.headers.get('host', '')}".lower(),
                                                  f"https://{ws.headers.get('host', '')}".lower()):
            why = f"origin {origin!r} is not this page's"
        if why:
            log.warning("refused a WebSocket: %s", why)
            await ws.close(code=1008)  # before accept: the handshake gets HTTP 403
            return
        await ws.accept()
        if state["open"] >= opts.max_conversations:
            await ws.send_json({"type": "busy", "message": f"the server is busy: {opts.max_conversations} "
                                f"conversations are open (its --max-conversations); close one or try again later"})
            await ws.close(code=1013)
            return
        state["open"] += 1
        try:
            await _converse(ws)
        finally:
            state["open"] -= 1  # after the conversation's thread has ended and its uploads are removed

    async def _converse(ws) -> None:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()
        closed = False

        def send(item) -> None:  # from the dialogue's thread
            if not closed:
                loop.call_soon_threadsafe(out.put_nowait, item)

        rng = None if opts.gen.greedy else np.random.default_rng(opts.seed)
        dialogue = await asyncio.to_thread(Dialogue, model, opts.gen, rng, opts.context, opts.voice, send)
        await ws.send_json(dialogue.hello() | {"limits": {"image_bytes": opts.limits.image_bytes,
                                                          "clip_bytes": opts.limits.clip_bytes}})
        dialogue.thread.start()
        sender = asyncio.create_task(_pump(ws, out))
        try:
            await _receive(ws, dialogue, opts.limits, out.put_nowait)
        except (WebSocketDisconnect, ConnectionError, RuntimeError):  # RuntimeError: starlette, socket gone
            pass
        except ProtocolError as e:
            log.warning("ended a connection: %s", e)
            sender.cancel()  # one writer at a time on the socket
            await _say_and_close(ws, str(e))
        finally:
            closed = True
            dialogue.close()
            sender.cancel()
            await asyncio.to_thread(dialogue.thread.join)
            dialogue.cleanup()

    async def _say_and_close(ws, message: str) -> None:
        try:
            await ws.send_json({"type": "error", "message": f"connection ended: {message}"})
            await ws.close(code=1003)
        except (RuntimeError, ConnectionError) as e:  # the socket may be gone already
            log.info("could not say why the connection ended: %s", e)

    async def _receive(ws, dialogue: Dialogue, limits: Limits, say) -> None:
        """Until the page leaves; `say` queues a message behind what the dialogue sends (one writer per socket)."""
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data, text = msg.get("bytes"), msg.get("text")
            try:
                if data is not None:
                    _binary(dialogue, data, limits)
                elif text is not None:
                    _text(dialogue, text, limits)
            except UploadRefused as e:
                say({"type": "error", "message": str(e)})

    def _binary(dialogue: Dialogue, data: bytes, limits: Limits) -> None:
        tag = data[0] if data else None
        if tag == MIC:
            dialogue.mic.feed(mic_pcm(data[1:], limits))
        elif tag in (IMAGE, CLIP):
            dialogue.submit(upload(tag, data[1:], limits))
        else:
            raise ProtocolError(f"binary message with unknown tag {tag}")

    def _text(dialogue: Dialogue, text: str, limits: Limits) -> None:
        kind, msg = command(text, limits)
        if kind == "played":
            dialogue.speaker.played(msg["epoch"], msg["samples"])
        elif kind == "mic":
            dialogue.mic.switch(msg["on"])
        elif kind == "voice":
            dialogue.submit(Command("voice", msg.get("name") or ""))
        elif kind == "text":
            dialogue.submit(Command("text", msg["text"]))
        else:
            dialogue.submit(Command(kind))

    async def health(request):
        return PlainTextResponse(f"ok {state['open']} open")

    app = Starlette(routes=[Route("/", page), Route("/static/{name}", page), Route("/health", health),
                            WebSocketRoute("/ws", socket)])
    app.state.conversations = state
    return app


async def _pump(ws, out: asyncio.Queue) -> None:
    """Everything the dialogue sends, in order: JSON messages and audio frames."""
    while True:
        item = await out.get()
        if isinstance(item, np.ndarray):
            await ws.send_bytes(audio_frame(item))
        elif item.get("type") == "close":
            await ws.close(code=1011)
            return
        else:
            await ws.send_json(item)
