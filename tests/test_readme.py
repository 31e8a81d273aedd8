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


def test_ci_runs_the_readme_test_commands_and_installs_once():
    """The README's install line and its test line (both tiers) are lines of .ci/run, in that order, and CI
    installs nothing else."""
    block = re.search(r"Install and run the tests.*?```bash\n(.*?)```", README.read_text(), re.S).group(1)
    install, test = block.strip().splitlines()
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert install in ci and test in ci and ci.index(install) < ci.index(test)
    assert sum("install.sh" in line for line in ci) == 1
    assert '-m "not slow"' in test and "-m slow" in test and "run_xla_tests.sh" in test
