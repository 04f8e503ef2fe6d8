"""`omni-run --serve`: the phone-mode web page on this machine's runtime. Its flags are registered here so that
runtime/cli.py only adds the group and hands over."""

from __future__ import annotations

import argparse
import secrets
import socket
import sys

from ..errors import OmniError
from ..generate import GenerationOptions
from ..model import DEFAULT_CONTEXT, OmniModel
from ..session import SessionOptions
from .server import LOOPBACK_NAMES, ServeOptions, create_app

DEFAULT_MAX_CONVERSATIONS = 2  # measured: benchmarks/results/web-live (tiny and full-size int8 on 2 cores)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("web page (--serve)")
    g.add_argument("--serve", action="store_true", help="serve the conversation page (microphone, phone mode, "
                                                        "voices, images, text chat) at http://HOST:PORT/")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on; other than loopback needs "
                                                       "--allow-remote")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument("--allow-remote", action="store_true", help="allow listening on a non-loopback address; "
                                                               "the page then needs a token")
    g.add_argument("--token", help="token the page must present (default with --allow-remote: a random one, printed)")
    g.add_argument("--max-conversations", type=int, default=DEFAULT_MAX_CONVERSATIONS,
                   help="tabs served at once; more are told the server is busy")


def serve_options(args: argparse.Namespace, gen: GenerationOptions) -> ServeOptions:
    """Checks the doors before anything loads."""
    if args.host not in LOOPBACK_NAMES and not args.allow_remote:
        raise OmniError(f"--host {args.host} would let other machines talk to the model; add --allow-remote to "
                        f"mean it (the page then needs a token), or keep the default 127.0.0.1")
    if args.max_conversations < 1:
        raise OmniError(f"--max-conversations must be at least 1, got {args.max_conversations}")
    if args.token is not None and len(args.token) < 8:
        raise OmniError("--token must be at least 8 characters; leave it out to get a random one")
    token = args.token or (secrets.token_urlsafe(16) if args.allow_remote else None)
    return ServeOptions(gen, args.seed, args.context or DEFAULT_CONTEXT, args.max_conversations, token,
                        args.allow_remote, args.voice)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one clear line (port 0: any free port)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OmniError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or stop the "
                        f"program using it") from None
    return sock


def import_server():
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise OmniError("--serve needs the serve extra: pip install 'omni-onnx[serve]'") from None
    return uvicorn


def serve(args: argparse.Namespace, gen: GenerationOptions) -> int:
    opts = serve_options(args, gen)
    import_server()
    model = OmniModel.load(args.bundle, SessionOptions(threads=args.threads))
    if opts.voice is not None:
        model.voice(opts.voice)  # an unknown --voice fails now, not in every tab
    server, sock = make_server(model, opts, args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}/" + (f"?token={opts.token}" if opts.token else "")
    if args.allow_remote:
        print(f"WARNING: listening on {args.host}: anyone who can reach this port and has the token can use the "
              f"model, the microphone page and voice cloning; the traffic is not encrypted", file=sys.stderr)
    print(f"[serving {url}  (Ctrl-C stops)]", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    return 0


def make_server(model: OmniModel, opts: ServeOptions, host: str, port: int):
    """(uvicorn.Server, its bound socket): `server.run(sockets=[sock])` serves until `server.should_exit`."""
    uvicorn = import_server()
    sock = bind(host, port)
    config = uvicorn.Config(create_app(model, opts), log_level="warning", ws_max_size=opts.limits.message_bytes,
                            ws_ping_interval=20, ws_ping_timeout=20)
    return uvicorn.Server(config), sock
