"""The demo: a web page (Gradio), the project's HTTP API and the OpenAI Images API on one FastAPI server, fed
by one batching job queue.

    python -m dalle_mini_pt.app [--pipeline DIR_OR_REPO] [--host 127.0.0.1] [--port 7860] [--api-key KEY]

`__main__.py` (the command line), `server.py` (`create_app`: the routes and the checks in front of them),
`settings.py` (every knob), `jobs.py` (the batcher: no web code) with `batch_window.py` (when a batch
starts), `api.py` (/api/generate, /health), `openai_api.py` (/v1/...) with `image_store.py` (its `url`
answers), `http_errors.py` (exceptions -> statuses, both error shapes), `access.py` (Host header, API key),
`body_limit.py`, `metrics.py` (/metrics), `shutdown.py` (SIGTERM without lost answers), `ui.py` (the page).
Needs the `[demo]` extra (gradio, fastapi, uvicorn, prometheus-client).
"""
