"""The deployment files (systemd units, Dockerfile, Compose, Kubernetes): each passes its own tool, runs the
Procfile's commands, and keeps secrets out of itself."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
YAMLLINT_CONFIG = ROOT / ".yamllint.yaml"

K8S_FILES = {
    "namespace.yaml",
    "configmap.yaml",
    "secret.example.yaml",
    "migrate-job.yaml",
    "web.yaml",
    "worker.yaml",
    "scheduler.yaml",
}
# The oldest Kubernetes the manifests promise to work on (deploy/README.md), and the newest schemas known.
K8S_VERSIONS = ("1.27.0", "1.37.0")

PROCESSES = ("release", "web", "worker", "scheduler")
UNIT_PROCESS = {
    "mdmq-migrate.service": "release",
    "mdmq-web.service": "web",
    "mdmq-worker.service": "worker",
    "mdmq-scheduler.service": "scheduler",
}
SERVICE_PROCESS = {"migrate": "release", "web": "web", "worker": "worker", "scheduler": "scheduler"}
COMPONENT_PROCESS = SERVICE_PROCESS  # Kubernetes' app.kubernetes.io/component labels

API_PORT = 8000
API_METRICS_PORT = 9190
WORKER_METRICS_PORT = 9191
SCHEDULER_METRICS_PORT = 9192
VENV_MDMQ = "/opt/mdmq/venv/bin/mdmq"
ENV_FILE = "/etc/mdmq/mdmq.env"
SECRET_PLACEHOLDERS = {"", "REPLACE_ME", "change-me"}
# Environment variables that hold a secret: only ever from a Secret, an EnvironmentFile or interpolation.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|DSN|API_?KEY|PRIVATE", re.IGNORECASE)
# scheme://user:password@host: a URL with its password inline.
URL_WITH_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/@\s:]+:[^@\s]+@")
# https://public-key@host/project-id: a Sentry DSN.
SENTRY_DSN = re.compile(r"https?://[^/@\s:]+@[^/\s]+/\d+")


# --- the tools -------------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """A checker from the dev extras: beside this Python (the virtual environment), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    assert found, f"{name} is missing: install mdmq's dev extras (pip install -e '.[dev]')"
    return found


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT, env=env
    )


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What a checker complained about: its output when it failed, or when it printed anything at all."""
    output = (result.stdout + result.stderr).splitlines()
    complaints = [line for line in output if line.strip()]
    return complaints or ([f"exit {result.returncode}"] if result.returncode else [])


def hadolint(dockerfile: Path) -> list[str]:
    # Every rule counts, down to style.
    return problems(run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)]))


def yamllint(*paths: Path) -> list[str]:
    command = [sys.executable, "-m", "yamllint", "--strict", "--format", "parsable"]
    return problems(run([*command, "--config-file", str(YAMLLINT_CONFIG), *map(str, paths)]))


def kubernetes_validate(paths: list[Path], version: str) -> list[str]:
    command = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "--kubernetes-version"]
    return problems(run([*command, version, *map(str, paths)]))


def compose_config(
    compose_file: Path, home: Path, *, password: str | None
) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with only the variables given here: no deploy/.env or shell variable in."""
    env_file = home / "compose.env"
    env_file.write_text(
        f"POSTGRES_PASSWORD={password}\nMDMQ_SECRET_KEY={password}\n" if password is not None else ""
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}
    command = [tool("docker-compose"), "--file", str(compose_file), "--env-file", str(env_file)]
    return run([*command, "config", "--format", "json"], env=env)


def systemd_analyze_verify(directory: Path) -> list[str]:
    """`systemd-analyze verify` on the units in `directory`, their ExecStart pointed at an executable that
    exists here (it checks that it does). Its complaints about the host's own units are not ours."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian's systemd package)"
    for unit in directory.glob("mdmq*"):
        unit.write_text(unit.read_text().replace(VENV_MDMQ, sys.executable))
    units = sorted(str(path) for path in directory.glob("mdmq*") if path.suffix in (".service", ".target"))
    assert units, directory
    result = run([analyze, "verify", "--man=no", *units])
    ours = [line for line in problems(result) if "mdmq" in line]
    return ours or ([f"exit {result.returncode}: {result.stderr}"] if result.returncode else [])


def copy_units(directory: Path) -> Path:
    for unit in SYSTEMD.iterdir():
        shutil.copy(unit, directory / unit.name)
    return directory


# --- the Procfile and the settings ------------------------------------------------------------------------

_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")
VENV_RUNNER = ["./dev", "run"]  # the checkout's .venv/bin first on PATH: `honcho start` needs no activation


def procfile_lines() -> dict[str, list[str]]:
    """Each Procfile line's words, `${VAR:-default}` taken at its default."""
    lines: dict[str, list[str]] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            lines[name.strip()] = shlex.split(_DEFAULTED.sub(r"\2", command))
    return lines


def procfile_commands() -> dict[str, list[str]]:
    """Each Procfile process's mdmq argv, as the other deployment files must run it."""
    commands: dict[str, list[str]] = {}
    for name, words in procfile_lines().items():
        assert words[: len(VENV_RUNNER)] == VENV_RUNNER, f"{name} runs through {' '.join(VENV_RUNNER)}"
        commands[name] = words[len(VENV_RUNNER) :]
    # The Procfile's release stays up afterwards (--stay) only because honcho stops everything when one
    # process ends; a Job, a oneshot unit and a Compose one-shot service must run to completion.
    commands["release"] = [word for word in commands["release"] if word != "--stay"]
    return commands


def setting_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def settings_from(variables: dict[str, str]) -> Settings:
    """The settings these MDMQ_* variables make, validated as at start: a bad one raises, naming it."""
    fields = {
        name.removeprefix(ENV_PREFIX).lower(): value
        for name, value in variables.items()
        if name.startswith(ENV_PREFIX)
    }
    return load_settings(**fields)


def test_the_procfile_has_the_four_processes_and_all_run_mdmq() -> None:
    commands = procfile_commands()
    assert set(commands) == set(PROCESSES)
    assert all(argv[0] == "mdmq" for argv in commands.values())
    assert commands["release"] == ["mdmq", "db", "upgrade"]


def test_the_metrics_ports_are_the_settings_defaults() -> None:
    # The manifests below hard-code them (container ports, scrape annotations): they must be the defaults.
    assert Settings.model_fields["api_metrics_port"].default == API_METRICS_PORT
    assert Settings.model_fields["worker_metrics_port"].default == WORKER_METRICS_PORT
    assert Settings.model_fields["scheduler_metrics_port"].default == SCHEDULER_METRICS_PORT
    assert procfile_commands()["web"][-2:] == ["--port", str(API_PORT)]


# --- stopping a worker ------------------------------------------------------------------------------------

# What a worker needs after its last message ends: requeue the prefetched messages, close, exit.
WORKER_EXIT_S = 60


def actor_time_limits_s() -> dict[str, float]:
    """Each kind of actor's time limit (workers/actors.py's *_OPTIONS), in seconds."""
    from workers import actors

    return {
        name: options["time_limit"] / 1000
        for name, options in vars(actors).items()
        if name.endswith("_OPTIONS") and isinstance(options, dict)
    }


def dramatiq_shutdown_timeout_s() -> float:
    """How long each Dramatiq worker process waits for its messages in flight after SIGTERM, as
    `mdmq worker` starts it (Dramatiq's --worker-shutdown-timeout, its default unless the command sets it)."""
    from workers.launch import launcher_arguments, parse_arguments, worker_command

    command = worker_command(processes=2, threads=8, urgent_threads=2)
    arguments = parse_arguments(launcher_arguments(command))
    timeout_ms: int = arguments.worker_shutdown_timeout
    return timeout_ms / 1000


def worker_stop_grace_needed_s() -> float:
    """The stop grace a worker needs so that no message in flight is killed: the longest an actor may run
    (a dispatch: its send, the locks, the record or the hand-off to a record-only message, all under its
    time limit), Dramatiq waiting at least as long, and the time to exit."""
    return max(*actor_time_limits_s().values(), dramatiq_shutdown_timeout_s()) + WORKER_EXIT_S


def test_dramatiq_waits_for_the_longest_message_and_a_dispatch_outlasts_its_send() -> None:
    from workers.push_gateway import SEND_TIMEOUT_S

    limits = actor_time_limits_s()
    assert {"DISPATCH_OPTIONS", "RECORD_OPTIONS"} <= set(limits)
    assert max(limits.values()) == limits["DISPATCH_OPTIONS"]
    # A dispatch's send may take its whole timeout, then the record-only path: the limit holds both.
    assert limits["DISPATCH_OPTIONS"] > SEND_TIMEOUT_S + limits["RECORD_OPTIONS"]
    # Dramatiq gives up on a message in flight after its shutdown timeout: it must not be the shorter.
    assert dramatiq_shutdown_timeout_s() >= limits["DISPATCH_OPTIONS"]
    assert worker_stop_grace_needed_s() == limits["DISPATCH_OPTIONS"] + WORKER_EXIT_S


# --- stopping the API and the scheduler -------------------------------------------------------------------

# What the API and the scheduler need once their last step ends: the API's lifespan clean-up (the key-check
# pool), the scheduler's lease release, and the exit.
PROCESS_EXIT_S = 30


def api_stop_grace_needed_s() -> float:
    """uvicorn's wait for the requests in flight, as `mdmq api` configures it, then the exit."""
    from api.server import server_config

    config = server_config(object(), Settings(), host="127.0.0.1", port=0)
    assert config.timeout_graceful_shutdown is not None, "uvicorn would wait for ever on a stuck request"
    return config.timeout_graceful_shutdown + PROCESS_EXIT_S


def scheduler_stop_grace_needed_s() -> float:
    """A stopping scheduler lets its job step in flight end: at most a provider call (the certificate
    watch's check, a held organization's probe push) and its record's wait for a lock; then the exit."""
    from models.database import LOCK_TIMEOUT_S
    from workers.push_gateway import SEND_TIMEOUT_S

    return SEND_TIMEOUT_S + LOCK_TIMEOUT_S + PROCESS_EXIT_S


STOP_GRACE_NEEDED_S = {
    "web": api_stop_grace_needed_s,
    "worker": worker_stop_grace_needed_s,
    "scheduler": scheduler_stop_grace_needed_s,
}


def test_the_api_waits_for_a_request_in_flight_as_long_as_one_may_take_and_no_longer() -> None:
    from api.server import SHUTDOWN_S
    from models.database import LOCK_TIMEOUT_S

    # Its body at the slowest allowed, then a statement behind a lock; a commit of 10,000 rows is ~1 s.
    assert Settings().api_body_timeout_s + LOCK_TIMEOUT_S <= SHUTDOWN_S
    assert api_stop_grace_needed_s() == SHUTDOWN_S + PROCESS_EXIT_S


@pytest.mark.parametrize("process", ["web", "worker", "scheduler"])
def test_each_process_has_one_stop_grace_in_every_deploy_file_longer_than_its_shutdown_needs(
    process: str, compose: dict[str, Any]
) -> None:
    (unit,) = [name for name, unit_process in UNIT_PROCESS.items() if unit_process == process]
    graces = {
        "systemd": float(parse_unit(SYSTEMD / unit)["Service"]["TimeoutStopSec"][0]),
        "kubernetes": float(pod_spec(workloads()[process])["terminationGracePeriodSeconds"]),
        "compose": duration_s(compose["services"][process]["stop_grace_period"]),
    }
    assert len(set(graces.values())) == 1, f"{process}: one stop grace everywhere, not {graces}"
    assert graces["systemd"] >= STOP_GRACE_NEEDED_S[process](), graces


# --- systemd -----------------------------------------------------------------------------------------------

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """A unit file's sections and keys; a key set twice (Environment=) keeps every value."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}: keep each setting on one line: {line!r}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, separator, value = line.partition("=")
        assert current is not None, f"{path.name}: a setting before any section: {line!r}"
        assert separator, f"{path.name}: not a setting: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_environment(unit: Unit) -> dict[str, str]:
    assignments = [shlex.split(value) for value in unit["Service"].get("Environment", [])]
    return dict(word.split("=", 1) for words in assignments for word in words)


def unit_command(unit: Unit) -> list[str]:
    """ExecStart's argv with ${VAR} taken from the unit's own Environment= (mdmq.env may override it)."""
    (exec_start,) = unit["Service"]["ExecStart"]
    environment = unit_environment(unit)
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], w) for w in shlex.split(exec_start)]
    assert argv[0] == VENV_MDMQ, f"ExecStart runs {argv[0]}, not the virtual environment's mdmq"
    return ["mdmq", *argv[1:]]


def units() -> dict[str, Unit]:
    found = {name: parse_unit(SYSTEMD / name) for name in UNIT_PROCESS}
    assert set(found) == {path.name for path in SYSTEMD.glob("*.service")}
    return found


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert systemd_analyze_verify(copy_units(tmp_path)) == []


def test_systemd_units_run_the_procfile_commands() -> None:
    commands = procfile_commands()
    for name, unit in units().items():
        assert unit_command(unit) == commands[UNIT_PROCESS[name]], name


@pytest.mark.parametrize("name", ["mdmq-web.service", "mdmq-worker.service", "mdmq-scheduler.service"])
def test_systemd_long_running_units_wait_for_the_migrations_and_restart_on_failure(name: str) -> None:
    unit = parse_unit(SYSTEMD / name)
    section, service = unit["Unit"], unit["Service"]
    after = " ".join(section["After"]).split()
    assert section["Requires"] == ["mdmq-migrate.service"]
    assert {"mdmq-migrate.service", "network-online.target"} <= set(after)
    assert "network-online.target" in " ".join(section["Wants"])
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert int(service["TimeoutStopSec"][0]) >= STOP_GRACE_NEEDED_S[UNIT_PROCESS[name]]()
    assert unit["Install"]["WantedBy"] == ["mdmq.target"]


@pytest.mark.parametrize("name", sorted(UNIT_PROCESS))
def test_systemd_units_run_hardened_as_the_mdmq_user_with_the_environment_file(name: str) -> None:
    service = parse_unit(SYSTEMD / name)["Service"]
    assert service["User"] == ["mdmq"]
    assert service["EnvironmentFile"] == [ENV_FILE]
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
    }
    assert {key: service.get(key, ["<unset>"])[-1] for key in hardening} == hardening
    assert not [key for key in unit_environment(parse_unit(SYSTEMD / name)) if SECRET_NAME.search(key)]


def test_the_migrate_unit_runs_once_and_stays_active() -> None:
    service = parse_unit(SYSTEMD / "mdmq-migrate.service")["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["RemainAfterExit"] == ["yes"]


def test_the_worker_unit_keeps_its_metrics_in_its_runtime_directory_and_stops_gracefully() -> None:
    unit = parse_unit(SYSTEMD / "mdmq-worker.service")
    (runtime_directory,) = unit["Service"]["RuntimeDirectory"]
    assert unit_environment(unit)["MDMQ_METRICS_DIR"] == f"%t/{runtime_directory}"
    assert int(unit["Service"]["TimeoutStopSec"][0]) >= worker_stop_grace_needed_s()
    # SIGTERM to the main Dramatiq process alone, which stops its worker processes; SIGKILL to every process
    # only once TimeoutStopSec has passed.
    assert unit["Service"]["KillMode"] == ["mixed"]


def test_the_target_wants_every_unit() -> None:
    target = parse_unit(SYSTEMD / "mdmq.target")
    assert set(" ".join(target["Unit"]["Wants"]).split()) == set(UNIT_PROCESS)
    assert target["Install"]["WantedBy"] == ["multi-user.target"]


def example_environment() -> dict[str, str]:
    """deploy/systemd/mdmq.env's variables, the commented-out examples included."""
    variables: dict[str, str] = {}
    for line in (SYSTEMD / "mdmq.env").read_text().splitlines():
        match = re.fullmatch(r"#?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            variables[match.group(1)] = match.group(2)
    return variables


def test_the_example_environment_file_names_real_settings_and_no_real_secret() -> None:
    variables = example_environment()
    unknown = set(variables) - setting_names() - {"PGPASSWORD", "WORKER_PROCESSES", "WORKER_THREADS"}
    assert unknown == set(), "not settings of mdmq (config/settings.py)"
    assert variables["PGPASSWORD"] in SECRET_PLACEHOLDERS
    assert "MDMQ_METRICS_DIR" not in variables, "mdmq-worker.service sets it to its RuntimeDirectory"
    assert not URL_WITH_PASSWORD.search(variables["MDMQ_DATABASE_URL"])
    uncommented = (SYSTEMD / "mdmq.env").read_text()
    assert "\nMDMQ_SENTRY_DSN=" not in uncommented, "a DSN is the operator's to fill in"
    settings_from(variables)  # every value as mdmq validates it at start


# --- the Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def image_entrypoint() -> list[str]:
    (entrypoint,) = [arguments for keyword, arguments in final_stage() if keyword == "ENTRYPOINT"]
    argv: list[str] = json.loads(entrypoint)  # exec form: the process itself gets SIGTERM
    return argv


def test_the_dockerfile_passes_hadolint() -> None:
    assert hadolint(DOCKERFILE) == []
    # An ignore pragma, if one is ever needed, says why on the line above it.
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#"), f"line {number + 1}: say why above the ignore"
            assert "hadolint" not in above, f"line {number + 1}: say why above the ignore"


def test_the_image_is_multi_stage_on_a_pinned_python_311_and_runs_unprivileged() -> None:
    bases = [arguments.split()[0] for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert len(bases) >= 2, "a build stage and a runtime stage"
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", bases[-1]), bases[-1]
    stage = final_stage()
    (user,) = [arguments for keyword, arguments in stage if keyword == "USER"]
    assert int(user.split(":")[0]) > 0, "a numeric non-root uid, for Kubernetes' runAsNonRoot"
    exposed = {int(port) for keyword, arguments in stage if keyword == "EXPOSE" for port in arguments.split()}
    assert exposed == {API_PORT, API_METRICS_PORT, WORKER_METRICS_PORT, SCHEDULER_METRICS_PORT}
    environment = " ".join(arguments for keyword, arguments in stage if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in environment.split()
    assert image_entrypoint() == ["mdmq"]


def test_the_image_bakes_in_no_secret() -> None:
    for keyword, arguments in dockerfile_instructions():
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not SECRET_NAME.search(arguments), f"{keyword} {arguments}"


def test_the_dockerignore_lets_in_exactly_what_pip_install_needs() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", "everything else stays out: .env files, databases, the virtual environment"
    let_in = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert let_in == packages | {"pyproject.toml", pyproject["project"]["readme"]}


# --- Compose ----------------------------------------------------------------------------------------------


def duration_s(text: str) -> float:
    """A Go duration as Compose prints it (`1m0s`), in seconds."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", text)
    assert text, "an empty duration"
    assert match, text
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """compose.yaml as Docker Compose itself resolves it, with a throw-away password."""
    result = compose_config(COMPOSE, tmp_path_factory.mktemp("compose"), password="only-for-this-test")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_compose_passes_docker_compose_config(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "redis", *SERVICE_PROCESS}


def test_compose_needs_the_database_password_from_outside_the_file(tmp_path: Path) -> None:
    result = compose_config(COMPOSE, tmp_path, password=None)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_compose_services_run_the_procfile_commands(compose: dict[str, Any]) -> None:
    commands = procfile_commands()
    for name, process in SERVICE_PROCESS.items():
        service = compose["services"][name]
        assert service.get("entrypoint") is None, "the image's ENTRYPOINT, so that commands read as mdmq's"
        assert [*image_entrypoint(), *service["command"]] == commands[process], name
        assert service["build"]["dockerfile"] == str(DOCKERFILE.relative_to(ROOT))
        assert Path(service["build"]["context"]).resolve() == ROOT


def test_compose_starts_the_release_first_and_the_stores_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    assert "test" in services["postgres"]["healthcheck"]
    assert "test" in services["redis"]["healthcheck"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker", "scheduler"):
        depends_on = {service: rule["condition"] for service, rule in services[name]["depends_on"].items()}
        assert depends_on == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "migrate": "service_completed_successfully",
        }, name


def test_compose_exposes_the_api_and_the_metrics_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # Only the API is published on the host; the metrics ports stay on Compose's private network.
    assert [port["target"] for port in services["web"]["ports"]] == [API_PORT]
    assert all("ports" not in services[name] for name in ("worker", "scheduler"))
    assert services["web"]["expose"] == [str(API_METRICS_PORT)]
    assert services["worker"]["expose"] == [str(WORKER_METRICS_PORT)]
    assert services["scheduler"]["expose"] == [str(SCHEDULER_METRICS_PORT)]
    for name in SERVICE_PROCESS:
        environment = services[name]["environment"]
        assert environment["MDMQ_API_METRICS_PORT"] == str(API_METRICS_PORT)
        assert environment["MDMQ_WORKER_METRICS_PORT"] == str(WORKER_METRICS_PORT)
        assert environment["MDMQ_SCHEDULER_METRICS_PORT"] == str(SCHEDULER_METRICS_PORT)


def test_compose_gives_the_worker_a_fresh_metrics_directory_and_time_to_stop(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    metrics_dir = Path(worker["environment"]["MDMQ_METRICS_DIR"])
    assert any(metrics_dir.is_relative_to(mount) for mount in worker["tmpfs"])
    assert duration_s(worker["stop_grace_period"]) >= worker_stop_grace_needed_s()


def test_compose_environment_names_settings_and_takes_secrets_from_outside(compose: dict[str, Any]) -> None:
    for name in SERVICE_PROCESS:
        environment: dict[str, str] = compose["services"][name]["environment"]
        mdmq = {key for key in environment if key.startswith(ENV_PREFIX)}
        assert mdmq <= setting_names(), name
        assert environment["PGPASSWORD"] == "only-for-this-test", "interpolated, never written in the file"
        assert not any(URL_WITH_PASSWORD.search(value) for value in environment.values())
        settings_from(environment)
    # In the file itself, every secret is a ${VARIABLE} for Compose to fill in.
    written = dict(secret_settings(yaml.safe_load(COMPOSE.read_text())))
    assert set(written) == {"PGPASSWORD", "POSTGRES_PASSWORD", "MDMQ_SECRET_KEY"}
    assert all(re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", value) for value in written.values()), written


def secret_settings(node: Any) -> Iterator[tuple[str, str]]:
    """Every (key, value) under a secret-looking key, at any depth of a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if SECRET_NAME.search(str(key)) and not isinstance(value, dict | list):
                yield str(key), str(value)
            yield from secret_settings(value)
    elif isinstance(node, list):
        for item in node:
            yield from secret_settings(item)


# --- Kubernetes -------------------------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    assert {path.name for path in K8S.glob("*.yaml")} >= K8S_FILES
    objects: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        objects += [document for document in yaml.safe_load_all(path.read_text()) if document]
    return objects


def workloads() -> dict[str, dict[str, Any]]:
    """The Deployments and the Job, by component."""
    found = {
        item["metadata"]["labels"]["app.kubernetes.io/component"]: item
        for item in k8s_objects()
        if item["kind"] in ("Deployment", "Job")
    }
    assert set(found) == set(COMPONENT_PROCESS)
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(workload)["containers"]
    assert isinstance(container, dict)
    return container


def config_map() -> dict[str, str]:
    (item,) = [item for item in k8s_objects() if item["kind"] == "ConfigMap"]
    data: dict[str, str] = item["data"]
    return data


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or a Service's port, by number or by the container port's name."""
    ports = {entry.get("name"): entry["containerPort"] for entry in container["ports"]}
    number = port if isinstance(port, int) else ports[port]
    assert number in ports.values(), f"{port} is not a port of {container['name']}"
    return number


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_api_schemas(version: str) -> None:
    assert kubernetes_validate(sorted(K8S.glob("*.yaml")), version) == []


def deploy_yaml_files() -> list[Path]:
    """Every YAML file under deploy/: Compose, Kubernetes, Prometheus's rules and their tests, Grafana's
    provisioning, and whatever is added later."""
    return sorted(path for path in DEPLOY.rglob("*") if path.suffix in (".yaml", ".yml"))


def test_yaml_files_pass_yamllint() -> None:
    files = deploy_yaml_files()
    assert {COMPOSE, *K8S.glob("*.yaml"), *(DEPLOY / "prometheus").glob("*.yml")} <= set(files)
    assert any("grafana" in path.parts for path in files)
    assert yamllint(*files) == []


def test_kubernetes_containers_run_the_procfile_commands() -> None:
    commands = procfile_commands()
    images = set()
    for component, workload in workloads().items():
        container = only_container(workload)
        assert [*container["command"], *container.get("args", [])] == commands[COMPONENT_PROCESS[component]]
        images.add(container["image"])
    assert len(images) == 1, "one image for every process"


def test_the_scheduler_runs_two_replicas_for_its_lease_and_keeps_one_in_a_disruption() -> None:
    scheduler = workloads()["scheduler"]
    assert scheduler["spec"]["replicas"] == 2
    text = (K8S / "scheduler.yaml").read_text().splitlines()
    above = text[: text.index("  replicas: 2")]
    comment = [line for line in above[-4:] if line.lstrip().startswith("#")]
    assert "lease" in " ".join(comment), "say why two: the database lease, and the standby's takeover"
    (budget,) = [item for item in k8s_objects() if item["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["minAvailable"] == 1
    labels = scheduler["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_api_probes_health_and_readiness_on_its_port() -> None:
    web = workloads()["web"]
    container = only_container(web)
    port = int(container["args"][container["args"].index("--port") + 1])
    probes = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in probes.items():
        action = container[probe]["httpGet"]
        assert action["path"] == path, probe
        assert container_port(container, action["port"]) == port, probe
    (service,) = [item for item in k8s_objects() if item["kind"] == "Service"]
    (service_port,) = service["spec"]["ports"]
    assert container_port(container, service_port["targetPort"]) == port
    assert service["spec"]["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("component", ["worker", "scheduler"])
def test_workers_and_schedulers_are_probed_on_their_metrics_port_past_the_schema_wait(component: str) -> None:
    container = only_container(workloads()[component])
    port = {"worker": WORKER_METRICS_PORT, "scheduler": SCHEDULER_METRICS_PORT}[component]
    probes = {name: container[name] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    for name, probe in probes.items():
        assert container_port(container, probe["httpGet"]["port"]) == port, name
    # The port opens only after the process has waited for the schema: liveness must not kill it meanwhile.
    startup = probes["startupProbe"]
    schema_wait_s = Settings.model_fields["schema_wait_s"].default
    assert startup["periodSeconds"] * startup["failureThreshold"] > schema_wait_s


@pytest.mark.parametrize(
    ("component", "port", "setting"),
    [
        ("web", API_METRICS_PORT, "MDMQ_API_METRICS_PORT"),
        ("worker", WORKER_METRICS_PORT, "MDMQ_WORKER_METRICS_PORT"),
        ("scheduler", SCHEDULER_METRICS_PORT, "MDMQ_SCHEDULER_METRICS_PORT"),
    ],
)
def test_long_running_processes_expose_their_metrics_port_to_prometheus(
    component: str, port: int, setting: str | None
) -> None:
    workload = workloads()[component]
    assert port in [entry["containerPort"] for entry in only_container(workload)["ports"]]
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    if setting is not None:
        assert config_map()[setting] == str(port)


def test_no_service_publishes_a_metrics_port() -> None:
    web = only_container(workloads()["web"])
    (service,) = [item for item in k8s_objects() if item["kind"] == "Service"]
    targets = {container_port(web, port["targetPort"]) for port in service["spec"]["ports"]}
    assert targets == {API_PORT}


def test_prometheus_scrapes_each_process_on_its_metrics_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    ports = {
        job["job_name"]: {
            int(target.rpartition(":")[2]) for c in job["static_configs"] for target in c["targets"]
        }
        for job in config["scrape_configs"]
    }
    assert ports == {
        "mdmq-web": {API_METRICS_PORT},
        "mdmq-worker": {WORKER_METRICS_PORT},
        "mdmq-scheduler": {SCHEDULER_METRICS_PORT},
    }


def test_the_worker_keeps_its_metrics_in_an_empty_dir_and_has_time_to_finish() -> None:
    worker = workloads()["worker"]
    container = only_container(worker)
    environment = {entry["name"]: entry.get("value") for entry in container.get("env", [])}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    empty_dirs = {volume["name"] for volume in pod_spec(worker)["volumes"] if "emptyDir" in volume}
    assert environment["MDMQ_METRICS_DIR"] in {mounts[name] for name in empty_dirs & set(mounts)}
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= worker_stop_grace_needed_s()


@pytest.mark.parametrize("component", sorted(COMPONENT_PROCESS))
def test_pods_run_unprivileged_with_resources_and_the_shared_configuration(component: str) -> None:
    workload = workloads()[component]
    spec = pod_spec(workload)
    container = only_container(workload)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # A Service named mdmq-web would otherwise put MDMQ_WEB_* variables inside mdmq's settings prefix.
    assert spec["enableServiceLinks"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"memory"} <= set(container["resources"]["limits"])
    sources = {(kind, ref["name"]) for entry in container["envFrom"] for kind, ref in entry.items()}
    assert sources == {("configMapRef", "mdmq-config"), ("secretRef", "mdmq-secrets")}
    namespaced = [item for item in k8s_objects() if item["kind"] != "Namespace"]
    assert {item["metadata"]["namespace"] for item in namespaced} == {"mdmq"}


def test_the_config_map_holds_valid_settings_and_no_secret() -> None:
    data = config_map()
    assert set(data) <= setting_names(), "not settings of mdmq (config/settings.py)"
    assert not [name for name in data if SECRET_NAME.search(name)], "secrets belong in the Secret"
    assert not [value for value in data.values() if URL_WITH_PASSWORD.search(value)]
    # The secret key comes from the Secret, as every container's environment does.
    settings = settings_from(data | {"MDMQ_SECRET_KEY": "from-the-secret"})
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert not settings.is_embedded


def test_kubernetes_manifests_commit_no_secret_value() -> None:
    secrets = [item for item in k8s_objects() if item["kind"] == "Secret"]
    assert [item["metadata"]["name"] for item in secrets] == ["mdmq-secrets"], "only the example"
    for secret in secrets:
        assert "data" not in secret, "base64 hides what is committed"
        assert set(secret["stringData"].values()) <= SECRET_PLACEHOLDERS
    for workload in workloads().values():
        for entry in only_container(workload).get("env", []):
            assert "value" not in entry or not SECRET_NAME.search(entry["name"]), entry
            assert not URL_WITH_PASSWORD.search(str(entry.get("value", ""))), entry


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from strings(item)
    elif node is not None:
        yield str(node)


def test_no_deployment_file_carries_a_password_or_a_dsn() -> None:
    written = {
        "k8s": [item for item in k8s_objects() if item["kind"] != "Secret"],
        "compose": yaml.safe_load(COMPOSE.read_text()),
        "systemd": [parse_unit(SYSTEMD / name) for name in (*UNIT_PROCESS, "mdmq.target")],
        "dockerfile": dockerfile_instructions(),
    }
    for where, content in written.items():
        found = [
            text for text in strings(content) if URL_WITH_PASSWORD.search(text) or SENTRY_DSN.search(text)
        ]
        assert found == [], where


# --- each checker rejects a broken file: none of the checks above passes whatever it is given ------------


def broken(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, f"{old!r} is no longer in {source.name}"
    copy = tmp_path / source.name
    copy.write_text(text.replace(old, new, 1))
    return copy


def test_hadolint_rejects_an_unpinned_base_image(tmp_path: Path) -> None:
    (first_from,) = re.findall(r"^FROM python:\S+", DOCKERFILE.read_text(), flags=re.MULTILINE)[:1]
    copy = broken(tmp_path, DOCKERFILE, first_from, "FROM python")
    assert any("DL3006" in line for line in hadolint(copy))


def test_yamllint_rejects_trailing_spaces(tmp_path: Path) -> None:
    copy = broken(tmp_path, COMPOSE, "name: mdmq\n", "name: mdmq   \n")
    assert any("trailing-spaces" in line for line in yamllint(copy))


def test_docker_compose_config_rejects_an_unknown_key(tmp_path: Path) -> None:
    copy = broken(tmp_path, COMPOSE, "stop_grace_period: 660s", "stop_grace_perod: 660s")
    result = compose_config(copy, tmp_path, password="only-for-this-test")
    assert result.returncode != 0
    assert "stop_grace_perod" in result.stderr


def test_kubernetes_validate_rejects_a_misspelt_field(tmp_path: Path) -> None:
    copy = broken(tmp_path, K8S / "scheduler.yaml", "  replicas: 2\n", "  replcas: 2\n")
    assert any("replcas" in line for line in kubernetes_validate([copy], K8S_VERSIONS[-1]))


def test_systemd_analyze_verify_rejects_a_misspelt_setting(tmp_path: Path) -> None:
    copy_units(tmp_path)
    broken(tmp_path, SYSTEMD / "mdmq-worker.service", "ProtectSystem=strict", "ProtectSytem=strict")
    assert any("ProtectSytem" in line for line in systemd_analyze_verify(tmp_path))
