"""The demo: a web page (Gradio) and an HTTP API on one FastAPI server, fed by one batching job queue.

    python -m dalle_mini_pt.app [--pipeline DIR_OR_REPO] [--host 127.0.0.1] [--port 7860]

`jobs.py` (the batcher: no web code), `server.py` (FastAPI, the API routes, `create_app`), `ui.py` (the
Gradio page), `__main__.py` (the command line). Needs the `[demo]` extra (gradio, fastapi, uvicorn).
"""
