"""docker-compose.yml, read the way Compose reads it (no docker engine on these machines).

Each check is a function of the parsed file, so the last tests can feed it broken variants
and show that it notices.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rolecall.cli import build_parser
from rolecall.config import load, load_settings
from rolecall.durations import parse_duration
from rolecall.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"

ONE_SHOTS = {"temporal-schema", "temporal-namespace", "rolecall-setup"}
LONG_RUNNING = {"temporal-db", "temporal", "temporal-ui", "worker", "slack-app", "demo-db"}
ROLECALL_SERVICES = {"worker", "slack-app", "rolecall-setup"}
# Docker's SIGKILL must wait out the worker's graceful period plus psycopg's cancel of a
# statement in flight (up to 10 s) and a little more: see docs/operations.md.
STOP_MARGIN = 15

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR; "$$" is a literal $.
_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))")


# ---- reading the files the way Compose does ------------------------------------------------


def _raw() -> str:
    return COMPOSE.read_text(encoding="utf-8")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(_raw())
    assert isinstance(data, dict)
    return data


def used_variables(text: str) -> dict[str, str | None]:
    """Every variable Compose interpolates in `text`: name -> its `:?`/`?` error (else None)."""
    found: dict[str, str | None] = {}
    for m in _VAR.finditer(text.replace("$$", "\0\0")):
        name = m.group("braced") or m.group("bare")
        required = m.group("arg") if (m.group("op") or "").endswith("?") else None
        if required is not None or name not in found:
            found[name] = required
    return found


def env_example(text: str | None = None) -> dict[str, tuple[str, bool]]:
    """Keys documented in .env.example -> (value, set?); `# KEY=value` lines count as documented."""
    keys: dict[str, tuple[str, bool]] = {}
    lines = (text if text is not None else ENV_EXAMPLE.read_text(encoding="utf-8")).splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if not m:
            continue
        commented, key, value = m.group(1) is not None, m.group(2), m.group(3)
        # Each key needs a comment: on the line above it, or above a run of related keys.
        j = i - 1
        while j >= 0 and re.match(r"^#?\s*[A-Z][A-Z0-9_]*=", lines[j].strip()):
            j -= 1
        assert j >= 0 and lines[j].startswith("#"), f".env.example: {key} has no comment"
        keys[key] = (value, not commented)
    return keys


def interpolate(value: str, env: dict[str, str]) -> str:
    """Resolve ${VAR:-default} and friends against `env` (.env.example's values)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op") or "", m.group("arg") or ""
        have = env.get(name)
        if op in (":-", "-") and (have is None or (op == ":-" and have == "")):
            return arg
        return have or ""

    return _VAR.sub(sub, value.replace("$$", "\0\0")).replace("\0\0", "$")


def _example_env() -> dict[str, str]:
    return {k: v for k, (v, _) in env_example().items()}


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for spec in service.get("ports", []):
        ports.add(int(str(spec).rsplit(":", 1)[-1].split("/")[0]))
    return ports


# ---- checks (each returns the problems it found) ---------------------------------------------


def dependency_problems(services: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            problems += [f"{name}: depends_on {d} without a condition" for d in deps]
            continue
        for dep, spec in deps.items():
            cond = (spec or {}).get("condition")
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
            elif cond == "service_healthy" and not services[dep].get("healthcheck"):
                problems.append(f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
            elif cond == "service_completed_successfully" and dep not in ONE_SHOTS:
                problems.append(f"{name}: waits for long-running {dep} to exit")
            elif cond not in ("service_healthy", "service_completed_successfully"):
                problems.append(f"{name}: depends on {dep} with condition {cond!r}")
    return problems


def variable_problems(compose_text: str, example_text: str) -> list[str]:
    documented = env_example(example_text)
    used = used_variables(compose_text)
    problems = [
        f"{v} is used by docker-compose.yml but not in .env.example" for v in used if v not in documented
    ]
    problems += [
        f"{k} is in .env.example but docker-compose.yml never uses it" for k in documented if k not in used
    ]
    for var, error in used.items():
        if error is not None and var in documented and not documented[var][1]:
            problems.append(f"{var} is required (:?) but commented out in .env.example")
    return problems


def shutdown_problems(services: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The worker must be given longer to stop than it gives its in-flight activities."""
    worker = services["worker"]
    graceful = interpolate(_env(worker).get("ROLECALL_GRACEFUL_SHUTDOWN", ""), env)
    if not graceful:
        return ["worker: ROLECALL_GRACEFUL_SHUTDOWN is not set"]
    try:
        settings = load_settings(graceful_shutdown=graceful)
    except ConfigError as e:
        return [f"worker: {e}"]
    if "stop_grace_period" not in worker:
        return ["worker: no stop_grace_period (Docker's default of 10s cuts the graceful shutdown)"]
    stop = parse_duration(interpolate(str(worker["stop_grace_period"]), env))
    if stop.total_seconds() < settings.graceful_shutdown.total_seconds() + STOP_MARGIN:
        return [
            f"worker: stop_grace_period {stop} is not at least {STOP_MARGIN}s over "
            f"ROLECALL_GRACEFUL_SHUTDOWN {settings.graceful_shutdown}"
        ]
    return []


SECRET_NAMES = r"PASSWORD|PWD|TOKEN|SECRET|API_KEY|DECISION_KEY"


def secret_problems(services: dict[str, Any]) -> list[str]:
    """A password, token or key in the file itself instead of a ${VAR} from .env."""
    problems = []
    for name, svc in services.items():
        for key, value in _env(svc).items():
            if re.search(SECRET_NAMES, key) and not used_variables(value):
                problems.append(f"{name}: {key} is written inline")
            for m in re.finditer(r"://[^:/@\s]+:([^@\s]+)@", value):
                if not used_variables(m.group(1)):
                    problems.append(f"{name}: {key} has a password inline")
    return problems


# ---- the file as it is -------------------------------------------------------------------------


def test_services_and_images() -> None:
    services = _compose()["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOTS
    assert services["temporal"]["image"].startswith("temporalio/server:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["temporal-db"]["image"].startswith("postgres:")
    assert services["demo-db"]["image"].startswith("postgres:")
    for tool in ("temporal-schema", "temporal-namespace"):
        assert services[tool]["image"].startswith("temporalio/admin-tools:")
    env = _example_env()
    # Server and admin-tools move together (the schema tool must match the server).
    server = interpolate(services["temporal"]["image"], env).split(":")[1]
    assert interpolate(services["temporal-schema"]["image"], env).split(":")[1] == server
    # One image for every rolecall process, built from ./Dockerfile.
    images = {interpolate(services[s]["image"], env) for s in ROLECALL_SERVICES}
    assert len(images) == 1
    for s in ROLECALL_SERVICES:
        assert services[s]["build"] == {"context": ".", "dockerfile": "Dockerfile"}


def test_temporal_uses_its_own_postgres() -> None:
    services = _compose()["services"]
    env = _env(services["temporal"])
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == "temporal-db"
    assert env["BIND_ON_IP"] == "0.0.0.0"
    # Same login on both sides of the connection.
    db = _env(services["temporal-db"])
    assert env["POSTGRES_USER"] == db["POSTGRES_USER"]
    assert env["POSTGRES_PWD"] == db["POSTGRES_PASSWORD"]
    # The server image has no dynamic config file and will not start without one.
    target = env["DYNAMIC_CONFIG_FILE_PATH"]
    mounted = {c["target"]: c["source"] for c in services["temporal"]["configs"]}
    assert mounted[target] in _compose()["configs"]
    schema = " ".join(_command(services["temporal-schema"]))
    assert "for db in temporal temporal_visibility" in schema
    for db_name, versioned in (("temporal", "temporal"), ("temporal_visibility", "visibility")):
        assert f"--db {db_name} setup-schema -v 0.0" in schema
        assert f"--db {db_name} update-schema -d $$schema/{versioned}/versioned" in schema
    assert _env(services["temporal-ui"])["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert _env(services["temporal-namespace"])["TEMPORAL_ADDRESS"] == "temporal:7233"


def test_commands_are_real_rolecall_commands() -> None:
    services = _compose()["services"]
    worker = _command(services["worker"])
    assert worker == ["rolecall", "worker"]
    assert build_parser().parse_args(worker[1:]).command == "worker"
    assert _command(services["slack-app"]) == ["python", "-m", "slack_app"]
    import slack_app

    assert callable(slack_app.main)
    setup = " ".join(_command(services["rolecall-setup"]))
    assert "rolecall setup" in setup
    assert build_parser().parse_args(["setup"]).command == "setup"
    assert services["rolecall-setup"].get("restart") == "no"


def test_dockerfile_matches_compose() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert stages and all(s == "python:3.11-slim" for s in stages)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0"), "the image must run as a non-root user"
    cmd = re.findall(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    assert cmd and yaml.safe_load(cmd[-1]) == _command(_compose()["services"]["worker"])
    assert not re.search(r"^ENTRYPOINT", text, re.M), "compose commands assume no ENTRYPOINT"
    assert "[dev]" not in text and "[demo]" not in text
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    for never in (".env", ".venv", ".git"):
        assert never in ignore


def test_ports() -> None:
    services = _compose()["services"]
    assert _container_ports(services["temporal"]) == {7233}
    assert _container_ports(services["temporal-ui"]) == {8080}
    assert _env(services["temporal-ui"])["TEMPORAL_UI_PORT"] == "8080"
    assert _container_ports(services["demo-db"]) == {5432}
    policy = load(REPO / "deploy" / "rolecall.compose.toml")
    assert _container_ports(services["slack-app"]) == {policy.slack.port}
    # Scaling workers must not collide on a host port.
    assert "ports" not in services["worker"]
    # No auth on these: loopback unless BIND_ADDRESS says otherwise.
    env = _example_env()
    for name in ("temporal", "temporal-ui", "demo-db"):
        for spec in services[name]["ports"]:
            assert interpolate(str(spec), env).startswith("127.0.0.1:"), (name, spec)


def test_health_checks() -> None:
    services = _compose()["services"]
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL")
        assert services[name].get("restart") in ("unless-stopped", "always")
    for name in ONE_SHOTS:
        assert services[name].get("restart") in ("no", "on-failure:5"), name
    assert "pg_isready" in " ".join(services["temporal-db"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["demo-db"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["temporal-ui"]["healthcheck"]["test"])
    assert "7233" in services["temporal"]["healthcheck"]["test"]
    worker = services["worker"]["healthcheck"]["test"]
    assert worker[:3] == ["CMD", "python", "-c"]
    compile(worker[3], "worker-healthcheck", "exec")  # valid Python
    assert "describe_task_queue" in worker[3] and "gethostname" in worker[3]
    assert "3000" in " ".join(services["slack-app"]["healthcheck"]["test"])


def test_start_order() -> None:
    services = _compose()["services"]
    assert dependency_problems(services) == []

    def waits(name: str) -> dict[str, str]:
        return {d: s["condition"] for d, s in services[name]["depends_on"].items()}

    assert waits("temporal-schema") == {"temporal-db": "service_healthy"}
    assert waits("temporal") == {"temporal-schema": "service_completed_successfully"}
    assert waits("temporal-namespace") == {"temporal": "service_healthy"}
    assert waits("temporal-ui") == {"temporal": "service_healthy"}
    assert waits("rolecall-setup") == {"temporal-namespace": "service_completed_successfully"}
    assert waits("worker") == {
        "rolecall-setup": "service_completed_successfully",
        "demo-db": "service_healthy",
    }
    assert waits("slack-app") == {"rolecall-setup": "service_completed_successfully"}


def test_worker_stops_gracefully_before_docker_kills_it() -> None:
    services = _compose()["services"]
    assert shutdown_problems(services, _example_env()) == []
    assert shutdown_problems(services, {}) == []  # the defaults written in the compose file
    env = _env(services["worker"])
    assert interpolate(env["ROLECALL_GRACEFUL_SHUTDOWN"], {}) == "30s"
    assert interpolate(str(services["worker"]["stop_grace_period"]), {}) == "45s"


def test_every_variable_is_in_env_example() -> None:
    assert variable_problems(_raw(), ENV_EXAMPLE.read_text(encoding="utf-8")) == []
    # The escaped ones are the container's own variables, not Compose's.
    used = used_variables(_raw())
    assert "POSTGRES_USER" not in used and "SLACK_APP_TOKEN" in used
    assert "TEMPORAL_DB_PASSWORD" in used and used["TEMPORAL_DB_PASSWORD"] is not None


def test_no_secrets_inline() -> None:
    assert secret_problems(_compose()["services"]) == []
    assert ".env" in (REPO / ".gitignore").read_text(encoding="utf-8").split()


def test_mounted_files_exist_and_volumes_are_named() -> None:
    data = _compose()
    env = _example_env()
    declared = set(data.get("volumes") or {})
    mounts: dict[str, str] = {}
    for name, svc in data["services"].items():
        for spec in svc.get("volumes", []):
            source, target = interpolate(str(spec), env).split(":")[:2]
            if source.startswith((".", "/")):
                assert (REPO / source).is_file(), f"{name}: {source} does not exist"
                mounts[f"{name}:{target}"] = source
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        for cfg in svc.get("configs", []):
            assert cfg["source"] in data["configs"], f"{name}: config {cfg['source']} not declared"
    assert mounts["demo-db:/docker-entrypoint-initdb.d/10-demo.sql"] == "./deploy/demo.sql"
    for s in ROLECALL_SERVICES:
        assert mounts[f"{s}:/etc/rolecall/rolecall.toml"] == "./deploy/rolecall.compose.toml"
        assert _env(data["services"][s])["ROLECALL_CONFIG"] == "/etc/rolecall/rolecall.toml"
    assert {"temporal-db-data", "demo-db-data"} <= declared
    # The admin login script runs after the seed (initdb runs the files in name order).
    admin = data["services"]["demo-db"]["configs"][0]["target"]
    assert admin.startswith("/docker-entrypoint-initdb.d/") and admin.rsplit("/", 1)[1] > "10-demo.sql"


def test_policy_points_at_the_demo_database() -> None:
    data = _compose()
    policy = load(REPO / "deploy" / "rolecall.compose.toml")
    worker_env = _env(data["services"]["worker"])
    db = _env(data["services"]["demo-db"])
    seed = (REPO / "deploy" / "demo.sql").read_text(encoding="utf-8")
    admin_script = data["configs"]["demo-admin-login"]["content"]
    for inst in policy.instances.values():
        dsn = urlsplit(interpolate(worker_env[inst.dsn_env], _example_env()))
        assert dsn.hostname == "demo-db" and dsn.port == 5432
        assert dsn.path.lstrip("/") == interpolate(db["POSTGRES_DB"], _example_env())
        assert dsn.username == "rolecall_admin" and dsn.username in admin_script
        assert worker_env[inst.dsn_env].count("${DEMO_ADMIN_PASSWORD") == 1
        assert db["ROLECALL_ADMIN_PASSWORD"] == "${DEMO_ADMIN_PASSWORD:?set DEMO_ADMIN_PASSWORD in .env}"
        for role in inst.roles:
            assert f"CREATE ROLE {role}" in seed
            assert role in admin_script


# ---- the checks notice broken files --------------------------------------------------------------


def test_checks_catch_mistakes() -> None:
    services = _compose()["services"]

    broken = copy.deepcopy(services)
    del broken["demo-db"]["healthcheck"]
    assert any("demo-db has no healthcheck" in p for p in dependency_problems(broken))

    broken = copy.deepcopy(services)
    broken["worker"]["depends_on"] = ["rolecall-setup"]
    assert dependency_problems(broken) == ["worker: depends_on rolecall-setup without a condition"]

    broken = copy.deepcopy(services)
    broken["slack-app"]["depends_on"] = {"temporal": {"condition": "service_completed_successfully"}}
    assert dependency_problems(broken) == ["slack-app: waits for long-running temporal to exit"]

    assert shutdown_problems(services, {"ROLECALL_GRACEFUL_SHUTDOWN": "40s"}) == [
        "worker: stop_grace_period 0:00:45 is not at least 15s over ROLECALL_GRACEFUL_SHUTDOWN 0:00:40"
    ]
    assert shutdown_problems(services, {"ROLECALL_GRACEFUL_SHUTDOWN": "30"}) == [
        "worker: ROLECALL_GRACEFUL_SHUTDOWN: duration '30' is not understood: use e.g. 90s, 15m, 2h or 1h30m"
    ]
    broken = copy.deepcopy(services)
    del broken["worker"]["stop_grace_period"]
    assert shutdown_problems(broken, {}) == [
        "worker: no stop_grace_period (Docker's default of 10s cuts the graceful shutdown)"
    ]

    broken = copy.deepcopy(services)
    broken["worker"]["environment"]["SLACK_BOT_TOKEN"] = "xoxb-123"
    broken["worker"]["environment"]["ROLECALL_DEMO_DSN"] = "postgresql://rolecall_admin:hunter2@demo-db/demo"
    assert sorted(secret_problems(broken)) == [
        "worker: ROLECALL_DEMO_DSN has a password inline",
        "worker: SLACK_BOT_TOKEN is written inline",
    ]


@pytest.mark.parametrize(
    ("compose", "example", "problem"),
    [
        (
            "image: x:${NEW_VERSION:-1}",
            "",
            "NEW_VERSION is used by docker-compose.yml but not in .env.example",
        ),
        ("pw: ${PW:?set PW}", "# the password\n# PW=\n", "PW is required (:?) but commented out"),
        (
            "a: $BARE",
            "# a\nBARE=1\n# b\nSTALE=1\n",
            "STALE is in .env.example but docker-compose.yml never uses",
        ),
    ],
)
def test_variable_check_catches_mistakes(compose: str, example: str, problem: str) -> None:
    assert any(p.startswith(problem) for p in variable_problems(compose, example))


def test_escaped_dollars_are_not_variables() -> None:
    assert used_variables("a: $${INSIDE} $$PLAIN ${OUTSIDE:-x}") == {"OUTSIDE": None}
    assert interpolate("${A:-d} ${B-d} ${C} $${D}", {"B": "", "C": "c"}) == "d  c ${D}"


def test_worker_and_slack_app_share_the_decision_key() -> None:
    """The Slack app signs with the key the worker verifies with: one variable, in both."""
    services = _compose()["services"]
    keys = {name: _env(services[name]).get("ROLECALL_DECISION_KEY") for name in ("worker", "slack-app")}
    assert keys == {"worker": "${ROLECALL_DECISION_KEY:-}", "slack-app": "${ROLECALL_DECISION_KEY:-}"}
