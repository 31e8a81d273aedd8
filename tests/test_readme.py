import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run():
    """The README's Python blocks are the documented API: they must keep running."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for code in blocks:
        if code.startswith("# downloads from the hub"):
            continue  # the hub is out of reach here; tests/test_hub.py covers that path
        exec(compile(code, str(README), "exec"), {})


def test_readme_commands_match_ci():
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = (
        "bash install.sh && bash scripts/reference_env.sh && bash scripts/min_dalle_env.sh "
        "&& bash scripts/xla_env.sh && HF_HUB_OFFLINE=1 .venv/bin/python -m pytest "
        "&& bash scripts/run_xla_tests.sh")
    assert test_command in README.read_text() and test_command in ci
