"""docker-compose.yml and Dockerfile: valid Compose, GPU service and CPU profile, named volumes, README's set-up.

`docker compose up` must open the course on a GPU host (NVIDIA reservation, enough /dev/shm), a
`cpu` profile must work without GPUs, the student's work must survive `down`/`up` whatever folder
the repository was cloned into, and the image must install the course with `make setup`, the
target the README's `make lab` / `make test` run first.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())   # resolves the `<<: *lab` merges
SERVICES = COMPOSE["services"]
# The Compose Specification's JSON schema, as vendored (and kept current) by check-jsonschema.
SCHEMA_FILE = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
CONTAINER_PORT = 8888


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def workdir() -> str:
    return [args for op, args in dockerfile() if op == "WORKDIR"][-1]


def make_rules() -> dict[str, list[str]]:
    """target -> prerequisites, from the Makefile's rule lines."""
    rules = {}
    for line in (REPO / "Makefile").read_text().splitlines():
        if m := re.match(r"^([A-Za-z][\w.-]*)\s*:(?!=)\s*([^#]*)", line):
            rules[m.group(1)] = m.group(2).split()
    return rules


def needs(target: str, rules: dict[str, list[str]]) -> set[str]:
    """Every target that `make target` builds first (transitively)."""
    seen, todo = set(), [target]
    while todo:
        for dep in rules.get(todo.pop(), []):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def default_services() -> dict[str, dict]:
    """What a plain `docker compose up` starts: the services without a profile."""
    return {name: s for name, s in SERVICES.items() if not s.get("profiles")}


def size_bytes(size: str | int) -> int:
    """Compose byte values: 1024, '512m', '8gb', '2G'."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", str(size).strip().lower())
    assert m, f"not a Compose byte value: {size!r}"
    return int(float(m.group(1)) * 1024 ** " kmg".index(m.group(2) or " "))


def mounts(service: dict) -> list[dict]:
    """The service's volumes in the long syntax (type, source, target)."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append(v)
            continue
        parts = v.split(":")
        source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
        kind = "bind" if source and source[0] in "./~$" else "volume"
        out.append({"type": kind, "source": source, "target": target})
    return out


# --------------------------------------------------------------------------- the specification


def test_compose_file_follows_the_compose_specification():
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema.get("title") == "Compose Specification"
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(COMPOSE), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    # the schema is strict, so the pass above means something: a misspelt key fails it
    typo = copy.deepcopy(COMPOSE)
    typo["services"]["lab"]["shm-size"] = "8gb"
    assert not validator.is_valid(typo)


@pytest.mark.skipif(not shutil.which("docker"), reason="no docker CLI")
def test_docker_compose_config_accepts_the_file():
    """Where the Compose plugin is installed, Compose itself parses the file (no engine needed)."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin here; the schema test above covers the file")
    for profile in ([], ["--profile", "cpu"]):
        done = subprocess.run(["docker", "compose", *profile, "config", "--quiet"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- services


def test_plain_up_starts_one_jupyterlab_with_nvidia_gpus():
    services = default_services()
    assert list(services) == ["lab"], f"`docker compose up` should start one lab service, not {list(services)}"
    devices = gpu_devices(services["lab"])
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert all(d.get("count", "all") == "all" or int(d["count"]) >= 1 for d in devices), devices
    assert services["lab"]["environment"]["COURSE_PROFILE"] == "gpu"


def test_cpu_profile_runs_without_gpus():
    cpu = {name: s for name, s in SERVICES.items() if "cpu" in s.get("profiles", [])}
    assert cpu, "no service in a `cpu` profile: machines without GPUs cannot use docker compose"
    for name, service in cpu.items():
        assert not gpu_devices(service), f"{name} reserves GPUs, so it fails where there are none"
        assert service["environment"]["COURSE_PROFILE"] == "cpu"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_shared_memory_is_enough_for_nccl_and_data_loaders(name):
    assert "shm_size" in SERVICES[name], f"{name}: Docker's default /dev/shm is 64 MB, too small for NCCL"
    assert size_bytes(SERVICES[name]["shm_size"]) >= 1024 ** 3


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_lab_listens_on_all_interfaces_behind_the_published_port(name):
    service = SERVICES[name]
    published = [str(p).rsplit(":", 1) for p in service["ports"]]
    assert any(container == str(CONTAINER_PORT) for _, container in published), service["ports"]
    cmd = service.get("command") or json.loads([a for op, a in dockerfile() if op == "CMD"][-1])
    assert cmd[:2] == ["make", "lab"] and "LAB_IP=0.0.0.0" in cmd, cmd   # 127.0.0.1 is unreachable from the host
    assert re.search(rf"^PORT\s*\?=\s*{CONTAINER_PORT}\b", (REPO / "Makefile").read_text(), re.M)
    assert f"EXPOSE {CONTAINER_PORT}" in [f"{op} {a}" for op, a in dockerfile()]


# --------------------------------------------------------------------------- student work


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_work_and_data_live_in_named_volumes(name):
    volumes = mounts(SERVICES[name])
    binds = [v for v in volumes if v["type"] != "volume"]
    assert not binds, f"{name}: bind mounts depend on the host's folder layout: {binds}"
    declared = COMPOSE.get("volumes") or {}
    for v in volumes:
        assert v["source"] in declared, f"{name}: volume {v['source']!r} is anonymous or undeclared"
        assert not (declared[v["source"]] or {}).get("external"), "an external volume must exist beforehand"
    targets = {v["target"] for v in volumes}
    assert {f"{workdir()}/release", f"{workdir()}/data"} <= targets, targets   # student work, dataset


def test_volume_names_do_not_depend_on_the_clone_folder():
    """Compose prefixes volumes with the project name, which defaults to the folder's name."""
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", COMPOSE.get("name", "")), "set a top-level `name:`"


# --------------------------------------------------------------------------- the image


def test_image_installs_the_student_pack_with_make_setup():
    """Stage 1 writes the student pack from the repository; the image students get starts from a clean base,
    copies only the pack, and installs it with the pack's own `make setup` (its Makefile, requirements and
    pyproject come with it)."""
    steps = dockerfile()
    starts = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert len(starts) == 2, "two stages: the pack, then the students' image"
    builder, image = steps[starts[0]:starts[1]], steps[starts[1]:]
    assert any("student-pack" in args for op, args in builder if op == "RUN")
    copies = [args for op, args in image if op == "COPY"]
    assert copies and all("--from=pack" in c for c in copies), copies
    runs = [args for op, args in image if op == "RUN"]
    assert any(re.search(r"\bmake setup\b", r) for r in runs), runs
    assert not any(re.search(r"\bpip3? install\b|\bpython3? -m pip\b", r) for op, r in steps if op == "RUN"), \
        "the image must install the course only through `make setup`, as the README does"
    assert (REPO / "pack" / "Makefile").is_file()
    packed = (REPO / "autograder" / "studentpack.py").read_text()
    assert '"requirements.txt", "pyproject.toml"' in packed


def test_readme_commands_set_up_through_the_same_target():
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    assert "make lab" in first_block and "make test" in first_block, first_block
    rules = make_rules()
    assert "setup" in needs("lab", rules) and "setup" in needs("test", rules), rules


def test_image_does_not_run_jupyter_as_root():
    users = [args.split(":")[0] for op, args in dockerfile() if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "Jupyter refuses to start as root (without --allow-root)"


def test_build_context_leaves_out_the_host_venv():
    """A host .venv copied over the image's would be taken as set up (its stamp is newer) and not work."""
    ignored = {ln.strip().rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", "data"} <= ignored, ignored


def test_make_lab_starts_jupyter_as_root_too():
    """`make lab` as root (a container, a CI box) must not stop at Jupyter's "Running as root" refusal."""
    dry = subprocess.run(["make", "-n", "lab"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    [lab] = [ln for ln in dry.splitlines() if "jupyter lab" in ln]
    assert ("--allow-root" in lab) == (os.getuid() == 0), lab
