"""The demo server's start and end: every bad command line value, a port in use and a network bind without
a key exit 2 before the model loads, leaving nothing behind; SIGTERM answers every request (the running
batch with its images, page and API; the waiting ones and new ones with 503), removes the server's files
and exits 0 (issue cases 5, 7, 8, 10)."""

import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("gradio", reason="the demo needs the [demo] extra: pip install -e .[demo]")
httpx = pytest.importorskip("httpx")

from demo_server import ROOT, Server, app_command, app_env, save_tiny_pipeline  # noqa: E402

from dalle_mini_pt.app.__main__ import parse_args  # noqa: E402


def files_in(folder):
    """The files under `folder` (torch leaves an empty cache folder of its own in any TMPDIR)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("args, message", [
    (["--port", "99999"], "--port 99999 must be between 1 and 65535"),
    (["--host", "0.0.0.0"], "--host 0.0.0.0 serves other machines: give a key"),
    (["--stream-every", "-5"], "every=-5 must be -1"),
    (["--max-queue", "0"], "max_queue=0 must be a whole number >= 1"),
    (["--timeout", "-1"], "timeout=-1.0 must be a number of seconds > 0"),
    (["--batch-wait", "nan"], "wait=nan must be a number of seconds >= 0"),
])
def test_bad_values_exit_2_before_the_model_loads(args, message, capsys):
    """The pipeline named does not exist: loading it would fail otherwise than with exit 2."""
    with pytest.raises(SystemExit) as exit:
        parse_args(["--pipeline", "/nonexistent/pipeline", *args])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_network_bind_needs_a_key_or_an_explicit_trust(monkeypatch):
    for extra in (["--api-key", "k"], ["--trust-network"]):
        args = parse_args(["--pipeline", "/nonexistent/pipeline", "--host", "0.0.0.0", "--port", str(_free()),
                           *extra])
        args.socket.close()
        assert "localhost" in args.settings.allowed_hosts and "0.0.0.0" not in args.settings.allowed_hosts
    monkeypatch.setenv("DALLE_MINI_PT_API_KEY", "from-the-environment")
    args = parse_args(["--pipeline", "/nonexistent/pipeline", "--host", "0.0.0.0", "--port", str(_free())])
    args.socket.close()
    assert args.settings.api_key == "from-the-environment"


def _free() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes; the in-process checks above run in the fast tier
def test_a_failed_start_says_why_and_leaves_no_files(tmp_path):
    """Issue case 7: `--port 99999` was a traceback after the model loaded, and left the app's folder."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, message in [(["--port", "99999"], "--port 99999 must be between 1 and 65535"),
                              (["--port", str(port)], f"cannot listen on 127.0.0.1:{port}")]:
            proc = subprocess.run(app_command("--pipeline", "/nonexistent/pipeline", *args), cwd=ROOT,
                                  env=app_env(TMPDIR=str(tmp_path)), capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert files_in(tmp_path) == [] and not list(tmp_path.glob("dalle_mini_pt_app_*"))


@pytest.mark.slow
def test_sigterm_answers_every_request_removes_its_files_and_exits_0(tiny_data, tmp_path):
    """Issue cases 5 and 7: after SIGTERM the running batch was computed but the page's clients got a
    connection error; every page image stayed in the system temp folder."""
    from gradio_client import Client

    pipeline = save_tiny_pipeline(tiny_data / "tokenizer", tmp_path / "pipeline")
    tmp = tmp_path / "server_tmp"
    tmp.mkdir()
    server = Server(pipeline, "--batch-images", "2", "--batch-wait", "0", env={"TMPDIR": str(tmp)})
    try:
        page = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
        running = page.submit("a blue circle", 2, 5, 8, 1.0, 1.0, 3.0, None, 0, api_name="/generate")
        deadline = time.monotonic() + 120
        while server.health()["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting_page = page.submit("a red square", 2, 6, 8, 1.0, 1.0, 3.0, None, 0, api_name="/generate")
        with ThreadPoolExecutor(3) as pool:
            waiting_api = [pool.submit(server.generate, {"prompt": "a cross", "options": {"num_images": 2}})
                           for _ in range(3)]
            while server.health()["waiting"] < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            late = server.generate({"prompt": "too late", "options": {"num_images": 1}})
            answers = [a.result(timeout=120) for a in waiting_api]
        gallery, status, files = running.result(timeout=120)
        with pytest.raises(Exception, match="shutting down"):
            waiting_page.result(timeout=120)
        assert server.proc.wait(timeout=120) == 0, server.proc.stdout.read()[-3000:]
    finally:
        server.stop()
    assert "seed **5**" in status and len(gallery) == 2 and len(files) == 2
    assert [a.status_code for a in answers] == [503] * 3 and all("had not started" in a.text for a in answers)
    assert late.status_code == 503 and late.headers["retry-after"]
    assert files_in(tmp) == [], files_in(tmp)
