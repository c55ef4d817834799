"""The README's commands after `make demo` / `make test` work in a fresh shell (nothing but PATH in the environment).

Each line of the two shell blocks of README's "After the two commands" section is run through `bash -c` under
`env -i PATH=...`: what a user who opens a new terminal and copy-pastes them gets. Servers run in their `--help` form
(`tensorboard ... --help`, `make -n tensorboard`) so the test takes seconds.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_init.cli import tensorboard_command

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## After the two commands"
#: A shell's default PATH without any virtual environment on it.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _blocks() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    out = []
    for block in blocks:
        lines = [line.split("  #")[0].strip() for line in block.splitlines()]
        out.append([line for line in lines if line and not line.startswith("#")])
    return out


def _quick(line: str) -> str:
    """The line as the test runs it: servers in a form that answers and exits."""
    if line.startswith("make "):
        return line.replace("make ", "make -n ", 1)
    if re.search(r"(^|/)tensorboard --logdir", line):
        return f"{line} --help"
    return line


def _fresh_shell(script: str) -> subprocess.CompletedProcess:
    env = {"PATH": BARE_PATH}
    if "PYTHONPATH" in os.environ:  # a git worktree whose .venv's editable install points at another checkout
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_readme_has_both_ways():
    direct, activated = _blocks()
    assert any(line.startswith("make tensorboard") for line in direct)
    assert all(line.startswith((".venv/bin/", "make ")) for line in direct), direct
    assert activated[0] == "source .venv/bin/activate"


@pytest.mark.skipif(not (ROOT / ".venv" / "bin").is_dir(), reason="needs the repository's .venv (make creates it)")
@pytest.mark.parametrize(("block", "index"), [(b, i) for b, lines in enumerate(_blocks()) for i in range(len(lines))])
def test_readme_command_works_in_a_fresh_shell(block, index):
    lines = _blocks()[block]
    line = lines[index]
    if line.startswith("source "):
        pytest.skip("the activation itself runs as the prefix of the block's other lines")
    prefix = f"{lines[0]} && " if lines[0].startswith("source ") else ""
    result = _fresh_shell(prefix + _quick(line))
    assert result.returncode == 0, (line, result.stdout[-1000:], result.stderr[-2000:])
    assert "usage:" in result.stdout.lower() or line.startswith("make "), result.stdout[-500:]
    if line.startswith("make tensorboard"):  # the target runs the venv's tensorboard on the demo's runs
        assert ".venv/bin/tensorboard --logdir demo_runs" in result.stdout.splitlines()[-1]


def test_demos_last_line_is_a_command_of_a_fresh_shell(monkeypatch):
    """`lightning-init demo` ends with this command: it must run where `tensorboard` is not on PATH."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PATH", BARE_PATH)
    command = tensorboard_command("demo_runs")
    if Path(sys.executable).parent == ROOT / ".venv" / "bin":
        assert command == ".venv/bin/tensorboard --logdir demo_runs"
    result = _fresh_shell(_quick(command))
    assert result.returncode == 0, (command, result.stderr[-2000:])
    assert "--logdir" in result.stdout
