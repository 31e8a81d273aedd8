"""python -m dalle_mini_pt.app: serve the demo page, the project's API and the OpenAI Images API for a saved
pipeline.

With no --pipeline it serves the embedded default's trained pipeline (runs/shapes/pipeline) when it is
there, and otherwise says how to make it. Binds 127.0.0.1 unless --host says otherwise; another address
needs an API key (--api-key or $DALLE_MINI_PT_API_KEY) or --trust-network. Every value is checked, and the
port bound, before the model loads.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before anything imports gradio

import dalle_mini_pt  # noqa: E402,F401  (torchvision fix first)

from ..generate import add_device_arguments, add_pipeline_arguments, load  # noqa: E402
from .access import bound_names, is_loopback  # noqa: E402
from .settings import ServerSettings  # noqa: E402

DEFAULT_PIPELINE = Path("runs/shapes/pipeline")
KEY_VARIABLE = "DALLE_MINI_PT_API_KEY"
DEFAULTS = ServerSettings()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dalle_mini_pt.app", description=__doc__.split("\n\n")[0])
    add_pipeline_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too (default: this)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--api-key", default=None,
                   help=f"require `Authorization: Bearer KEY` on the page and every API route (default: "
                        f"${KEY_VARIABLE}, which keeps the key out of the process list)")
    p.add_argument("--trust-network", action="store_true",
                   help="serve a non-loopback --host without a key: everyone who can reach it may use it")
    p.add_argument("--allowed-host", action="append", default=[],
                   help="another name the Host header may hold (a proxy's, a DNS name); '*' turns the check "
                        "off")
    p.add_argument("--cors-origin", action="append", default=[],
                   help="a web origin (https://chat.example) whose pages may call the API from the browser")
    p.add_argument("--batch-images", type=int, default=DEFAULTS.batch_images,
                   help="most images sampled in one call; requests arriving together are merged up to it")
    p.add_argument("--batch-wait", type=float, default=DEFAULTS.wait,
                   help="most seconds a request waits for others to merge with")
    p.add_argument("--max-queue", type=int, default=DEFAULTS.max_queue,
                   help="requests that may wait for a batch; one more is answered 429 with Retry-After")
    p.add_argument("--timeout", type=float, default=DEFAULTS.timeout,
                   help="seconds a request may wait for its batch to start; then it is answered 503")
    p.add_argument("--stream-every", type=int, default=DEFAULTS.every,
                   help="sampling steps between the page's partial images (default -1: one row of codes)")
    p.add_argument("--model-id", default=DEFAULTS.model_id, help="the model name the OpenAI route serves")
    p.add_argument("--url-ttl", type=float, default=DEFAULTS.url_ttl,
                   help="seconds an OpenAI `url` answer stays fetchable")
    p.add_argument("--no-page", action="store_true", help="serve the APIs alone, without the Gradio page")
    add_device_arguments(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.model is not None and args.vqgan is None:
        p.error("--model needs --vqgan (and optionally --clip); or give --pipeline")
    if not 1 <= args.port <= 65535:
        p.error(f"--port {args.port} must be between 1 and 65535")
    args.api_key = args.api_key if args.api_key is not None else os.environ.get(KEY_VARIABLE) or None
    if args.api_key is None and not args.trust_network and not is_loopback(args.host):
        p.error(f"--host {args.host} serves other machines: give a key (--api-key, or ${KEY_VARIABLE}) that "
                "every request must carry, or say --trust-network to serve everyone who can reach it")
    try:
        args.settings = ServerSettings(
            batch_images=args.batch_images, wait=args.batch_wait, every=args.stream_every,
            max_queue=args.max_queue, timeout=args.timeout, api_key=args.api_key, model_id=args.model_id,
            url_ttl=args.url_ttl, allowed_hosts=bound_names(args.host, args.allowed_host),
            cors_origins=tuple(args.cors_origin))
    except ValueError as e:
        p.error(f"{e} (see --help)")
    if args.pipeline is None and args.model is None:
        if not (DEFAULT_PIPELINE / "model_index.json").exists():
            p.exit(2, f"no --pipeline given and no trained pipeline in {DEFAULT_PIPELINE}: make it with "
                      "`python -m dalle_mini_pt.shapes_pipeline` (README: how long it takes), or pass "
                      "--pipeline DIR_OR_REPO\n")
        args.pipeline = str(DEFAULT_PIPELINE)
    args.socket = listen(p, args.host, args.port)
    return args


def listen(p: argparse.ArgumentParser, host: str, port: int) -> socket.socket:
    """The bound socket, before the model loads: a port in use fails in a second, not after the load."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        p.exit(2, f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port or --host\n")
    sock.set_inheritable(True)
    return sock


def main(argv=None) -> None:
    args = parse_args(argv)
    import uvicorn

    from .server import create_app
    from .shutdown import GracefulServer

    try:
        pipe = load(args)
        app = create_app(pipe, args.settings, ui=not args.no_page)
    except BaseException:
        args.socket.close()
        raise
    try:
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10)
        server = GracefulServer(config, app.state.batcher, app.state.draining)
        print(f"dalle-mini-pt demo on http://{args.host}:{args.port}/ (APIs: POST /api/generate, "
              "POST /v1/images/generations, GET /v1/models, GET /health, GET /metrics)", file=sys.stderr)
        server.run(sockets=[args.socket])
    finally:
        app.state.close()
        args.socket.close()


if __name__ == "__main__":
    main()
