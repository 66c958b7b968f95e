"""`python launch.py`: the workbench on 127.0.0.1:7860, on the default workspace with the bundled sample.

The page is served at once; importing the sample and installing shipped demo checkpoints run in a
background thread and the page shows their progress."""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network to report to, and no reason to


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="NoteLLM-2 workbench (Gradio)")
    parser.add_argument("--workspace", default=None, help="workspace folder (default data/workspace)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; use 0.0.0.0 to serve your network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    parser.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    parser.add_argument("--no-browser", action="store_true", help="(default) kept for symmetry; never opens one")
    return parser.parse_args(argv)


def parse_auth(value: str | None):
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("error: --auth takes USER:PASS")
    return (user, password)


def serve(workspace=None, host="127.0.0.1", port=7860, share=False, auth=None, block=True, backend=None):
    from app.backend import Backend
    from app.main import build_app, launch_kwargs

    if backend is None:
        backend = Backend(workspace)
        backend.start_background()
    demo = build_app(backend)
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name=host, server_port=port, share=share, auth=auth, prevent_thread_lock=not block,
                show_error=True, footer_links=["api", "gradio"],
                allowed_paths=[str(backend.workspace.images_dir)], **launch_kwargs())
    return demo, backend


def main(argv=None) -> int:
    args = parse_args(argv)
    serve(args.workspace, args.host, args.port, args.share, parse_auth(args.auth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
