"""docker/Dockerfile and docker/compose.yaml, checked without a Docker engine.

- The compose file: three services on one private network, reaching each other by service name
  only; ports, volumes and defaults that agree between the services; every `python -m` program
  exists and accepts its flags (each program's own argparse parses them).
- The compose commands themselves, run in three network namespaces (bench.netns) where the service
  names resolve as on a compose network: the run ends by itself and leaves its results.
- The Dockerfile's RUN steps, run in a fresh virtual environment (slow).
- The image built and the compose file run for real by scripts/docker_local.sh, where a Docker
  engine, debootstrap and docker-compose are at hand (slow; skipped elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import yaml

from bench.netns import shaped_network, unavailable

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
DEFAULTS = {"ARCH": "baseline", "PRESET": "tiny", "DEALER": "ttp", "PORT": "7000"}


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation: ${VAR:-default}; every variable must have a default; $$ is $."""
    env = env or {}

    def value(match: re.Match) -> str:
        assert match[2] is not None, f"${{{match[1]}}} has no default"
        return env.get(match[1]) or match[2]

    text = text.replace("$$", "\0")
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", value, text).replace("\0", "$")


def programs(service: str) -> list[tuple[str, list[str]]]:
    """Every `python -m MODULE ARGS` a service's command runs, with compose defaults filled in."""
    command = [interpolate(part) for part in SERVICES[service]["command"]]
    script = command[2] if command[:2] == ["sh", "-c"] else shlex.join(command)
    found = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split, lexer.commenters = True, "#"
        segment: list[str] = []
        for word in [*lexer, ";"]:  # a shell operator ends a simple command
            if word.strip(";&|()<>"):
                segment.append(word)
                continue
            for i in range(len(segment) - 2):
                if segment[i : i + 2] == ["python", "-m"]:
                    found.append((segment[i + 2], segment[i + 3 :]))
            segment = []
    return found


def parsed(module_name: str, argv: list[str]) -> argparse.Namespace:
    """What the program's own argparse makes of argv: its parse_args, or its main stopped there."""
    module = importlib.import_module(module_name)
    if hasattr(module, "parse_args"):
        return module.parse_args(argv)

    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        with pytest.raises(Parsed) as caught:
            module.main(argv)
    return caught.value.args[0]


PARTIES = ("dealer", "server", "client")


def mount(service: str) -> tuple[Path, str]:
    """(host folder, container folder) of a service's one volume, compose defaults filled in."""
    (volume,) = SERVICES[service]["volumes"]
    source, target = interpolate(volume).split(":")
    return (DOCKER / source).resolve(), target


def test_three_parties_on_a_private_network_by_name_only():
    assert set(SERVICES) == {*PARTIES, "report"}
    assert COMPOSE["networks"]["mpc"].get("internal") is True
    text = (DOCKER / "compose.yaml").read_text()
    assert not re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b", text), "an IP address is hard-coded"
    assert SERVICES["report"]["network_mode"] == "none", "the report talks to no one"
    for name in PARTIES:
        service = SERVICES[name]
        assert service["networks"] == ["mpc"], name
        assert service["build"]["context"] == ".."
        assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["environment"]["GLOO_SOCKET_IFNAME"] == "eth0"
    assert SERVICES["server"]["depends_on"] == ["dealer"]
    assert SERVICES["client"]["depends_on"] == ["server"]
    assert SERVICES["report"]["depends_on"] == {
        "client": {"condition": "service_completed_successfully"}
    }
    for variable, default in DEFAULTS.items():
        assert f"${{{variable}:-{default}}}" in text, variable


def test_programs_exist_and_accept_their_flags():
    runs = {service: programs(service) for service in SERVICES}
    assert [module for module, _ in runs["dealer"]] == ["mpc.dealer"]
    assert [module for module, _ in runs["server"]] == ["mpc.server"]
    assert [module for module, _ in runs["client"]] == ["mpc.client"]
    assert [module for module, _ in runs["report"]] == ["bench.collect"]
    dealer, server, client, collect = (
        parsed(*runs[s][0]) for s in ("dealer", "server", "client", "report")
    )
    assert collect.preset == server.preset
    # Hosts are service names; ports agree with each other and with what each service exposes.
    assert (dealer.host, server.host, client.host) == ("dealer", "server", "server")
    assert server.dealer_address == f"dealer:{dealer.port}"
    assert client.port == server.port and server.mpc_port == server.port + 1
    assert [interpolate(p) for p in SERVICES["server"]["expose"]] == ["7000", "7001"]
    assert [interpolate(p) for p in SERVICES["dealer"]["expose"]] == [str(dealer.port)]
    assert (server.random_arch, server.preset, server.dealer) == ("baseline", "tiny", "ttp")
    assert server.max_queries == dealer.max_sessions == 1, "server and dealer stop after the run"
    assert client.timeout >= 300, "the client retries its connection while the server starts"
    # Each party writes into its own mounted folder: the server's container never sees the
    # client's prompt ids and logits. The report reads both from the run folder above them.
    run = ROOT / "results" / "docker-baseline-tiny"
    assert (
        mount("server") == (run / "server", "/app/results") == (run / "server", server.measure_dir)
    )
    assert mount("client") == (run / "client", "/app/results")
    assert client.json_out.startswith("/app/results/client-")
    assert "volumes" not in SERVICES["dealer"], "the dealer keeps nothing"
    source, target = mount("report")
    assert source == ROOT / "results" and collect.folder == f"{target}/docker-baseline-tiny"


def dockerfile_steps() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def run_mounts(body: str) -> tuple[dict[str, dict[str, str]], str]:
    """A RUN body's BuildKit mounts ({type: options}) and its shell command."""
    mounts = {}
    while body.startswith("--mount="):
        option, _, body = body.partition(" ")
        fields = dict(item.split("=", 1) for item in option[len("--mount=") :].split(","))
        mounts[fields.pop("type")] = fields
    return mounts, body


def test_dockerfile_installs_as_setup_sh_does():
    steps = dockerfile_steps()
    assert steps[:2] == [("ARG", "BASE_IMAGE=python:3.11-slim"), ("FROM", "${BASE_IMAGE}")]
    runs = [run_mounts(body) for kind, body in steps if kind == "RUN"]
    commands = [command for _, command in runs]
    torch = next(i for i, r in enumerate(commands) if "torch==2.13.0" in r)
    project = next(i for i, r in enumerate(commands) if "pip install . " in r)
    assert "crypten==0.4.1" in commands[project].split("pip install . ", 1)[1]
    assert torch < project, "torch's CPU build, then the project, then crypten"
    assert '--no-deps "crypten==0.4.1"' in commands[project] and "--index-url" in commands[torch]
    args = dict(body.split("=", 1) for kind, body in steps if kind == "ARG")
    assert args["TORCH_INDEX"].endswith("/whl/cpu")
    # Optional local wheels and a proxy's CA bundle: mounted for the step only, never copied.
    assert runs[torch][0]["bind"] == {"source": "docker/wheels", "target": "/wheels"}
    assert "--find-links /wheels" in commands[torch] and (ROOT / "docker/wheels").is_dir()
    for mounts, command in runs:
        if "pip install" in command:
            assert mounts["secret"] == {"id": "pip_cert"} and "PIP_CERT" in command
    assert not any("pip_cert" in body or "wheels" in body for kind, body in steps if kind == "COPY")
    for kind, body in steps:
        if kind == "COPY":
            *sources, _ = body.split()
            assert all((ROOT / source).exists() for source in sources), body


@contextlib.contextmanager
def service_names_resolve(topology):
    """/etc/netns/NS/hosts: `ip netns exec` shows it as /etc/hosts, as compose's DNS would."""
    hosts = "".join(f"{topology.address(p)} {p}\n" for p in ("server", "client", "dealer"))
    folders = [Path("/etc/netns", topology.namespace(p)) for p in ("server", "client", "dealer")]
    try:
        for folder in folders:
            folder.mkdir(parents=True)
            (folder / "hosts").write_text(f"127.0.0.1 localhost\n{hosts}")
        yield
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # only if empty: another run may be using it
            Path("/etc/netns").rmdir()


def test_compose_commands_run_end_to_end_in_namespaces(tmp_path):
    if reason := unavailable():
        pytest.skip(reason)

    results = tmp_path / "results"
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # `python` is this one

    def service_argv(service: str) -> list[str]:
        """The service's command with its mount's container folder replaced by a host one."""
        argv = [interpolate(p) for p in SERVICES[service]["command"]]
        if "volumes" not in SERVICES[service]:
            return argv
        source, target = mount(service)
        here = results / source.relative_to(ROOT / "results")
        here.mkdir(parents=True, exist_ok=True)  # as docker creates a bind mount's folder
        return [part.replace(target, str(here)) for part in argv]

    def command(service: str) -> list[str]:
        argv = service_argv(service)
        namespace = topology.namespace(service)
        return [
            "ip",
            "netns",
            "exec",
            namespace,
            "env",
            "GLOO_SOCKET_IFNAME=eth0",
            f"PATH={path}",
            *argv,
        ]

    with shaped_network("none") as topology, service_names_resolve(topology):
        background = [
            subprocess.Popen(
                command(s), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
            )
            for s in ("dealer", "server")
        ]
        try:
            client = subprocess.run(
                command("client"), capture_output=True, text=True, timeout=300, cwd=ROOT
            )
            assert client.returncode == 0, client.stderr
            for process in background:  # --max-queries / --max-sessions: `up` returns
                assert process.wait(timeout=60) == 0, process.stdout.read()
        finally:
            for process in background:
                process.kill()
                process.wait()
    argv = ["env", f"PATH={path}", *service_argv("report")]  # after the client: no network
    report = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    assert report.returncode == 0, report.stderr
    folder = results / "docker-baseline-tiny"
    assert {p.name for p in (folder / "server").iterdir()} == {"server-1.json"}
    assert {p.name for p in (folder / "client").iterdir()} == {"client-1.json"}
    made = {p.name for p in folder.iterdir()}
    assert {"client", "server", "results.csv", "summary.md", "plots"} <= made
    rows = pd.read_csv(folder / "results.csv")
    assert set(rows.party) == {"server", "client"} and set(rows.network) == {"docker"}
    assert (rows.bytes == rows.predicted_bytes).all()


@pytest.mark.slow
def test_dockerfile_run_steps_install_a_working_environment(tmp_path):
    """The RUN steps in a fresh venv (apt-get skipped: a system package). TORCH_INDEX is PyPI
    here, where pip's configured local wheels hold the CPU build; the test checks it is one."""
    venv, app = tmp_path / "venv", tmp_path / "app"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["TORCH_INDEX"] = "https://pypi.org/simple"
    for kind, body in dockerfile_steps():
        if kind == "ENV":
            env.update(pair.split("=", 1) for pair in body.split())
        elif kind == "WORKDIR":
            app.mkdir()
        elif kind == "COPY":
            *sources, target = body.split()
            for source in sources:
                destination = (
                    app / target / Path(source).name if target.endswith("/") else app / target
                )
                copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy
                copy(ROOT / source, destination)
        elif kind == "RUN" and not body.startswith("apt-get"):
            body = run_mounts(body)[1].replace("/wheels", str(DOCKER / "wheels"))
            done = subprocess.run(
                ["sh", "-c", body], cwd=app, env=env, capture_output=True, text=True, timeout=1500
            )
            assert done.returncode == 0, f"RUN {body}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    check = "from mpc.compat import import_crypten; import_crypten(); import torch; print(torch.version.cuda)"
    done = subprocess.run(["python", "-c", check], cwd=app, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "None", "torch is not the CPU build"


def docker_engine_missing() -> str | None:
    """Why the real image cannot be built and run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("/usr/bin/docker", "docker-compose", "debootstrap"):
        if not shutil.which(tool):
            return f"needs {tool}"
    info = subprocess.run(["/usr/bin/docker", "info"], capture_output=True, timeout=60)
    return None if info.returncode == 0 else "no Docker engine is running"


@pytest.mark.slow
def test_image_builds_and_compose_runs_for_real(tmp_path):
    """scripts/docker_local.sh: the image from a local base, compose v1 up, results collected."""
    if reason := docker_engine_missing():
        pytest.skip(reason)
    env = {**os.environ, "RESULTS_DIR": str(tmp_path), "SEQ_LEN": "8"}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/docker_local.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = tmp_path / "docker-baseline-tiny"
    record = json.loads((folder / "docker-run.json").read_text())
    assert {c["exit_code"] for c in record["containers"].values()} == {0}
    assert record["trust"]["dealer"] == "ttp" and record["peers_seen"]["server saw the client at"]
    rows = pd.read_csv(folder / "results.csv")
    assert set(rows.party) == {"server", "client"} and (rows.bytes == rows.predicted_bytes).all()
    assert (folder / "client" / "client-1.json").is_file()
