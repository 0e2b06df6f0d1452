"""The cluster files in ``distributed/`` are valid and run the shipped sweeps as written, checked offline.

* ``cluster.yaml`` against the installed Ray's autoscaler schema (``ray/autoscaler/ray-schema.json``) and Ray's own
  config preparation and checks (defaults merged, docker image and container name, worker counts);
* ``rayjob.yaml`` against KubeRay's RayJob CRD (``../shared/kuberay/ray.io_rayjobs.yaml``, see its README), closed
  to unknown fields so that a misspelt key fails instead of being pruned by Kubernetes;
* what the files promise: every search space in ``search_spaces/`` finds node types whose CPUs (and GPUs) fit its
  Ray Train workers; the nodes and pods all run the one knnmix image of ``distributed/Dockerfile``, which installs
  this repository (``pip install .``) on the Ray 2.60.0 / Python 3.11 base knnmix pins; the RayJob's entrypoint is a
  script the image holds and its workers fit the run; the head's IAM policy (``distributed/iam-policy.json``)
  has the rights the autoscaler needs to start workers. No Ray is started, nothing goes to AWS or Kubernetes.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

from knnmix import config as C

REPO = Path(__file__).resolve().parents[1]
DIST = REPO / "distributed"
SPACES = REPO / "search_spaces"
PRESETS = REPO / "src" / "knnmix" / "presets"
KUBERAY = Path(__file__).resolve().parents[2] / "shared" / "kuberay"

#: What Ray's AWS autoscaler calls on the head to start, tag and stop workers, and what Ray Train's S3 storage needs.
HEAD_ACTIONS = (
    "ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "ec2:StartInstances", "ec2:StopInstances",
    "ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeImages", "ec2:DescribeSubnets",
    "iam:PassRole", "iam:GetInstanceProfile", "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
)
#: Sid prefixes of the statements the workers' role gets too (the README's `jq` selects them).
WORKER_SIDS = ("CheckpointBucket", "PullImage")


# ---------------------------------------------------------------------------------------------------------------
# Reading the files


def cluster() -> dict[str, Any]:
    return yaml.safe_load((DIST / "cluster.yaml").read_text())


def rayjobs() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DIST / "rayjob.yaml").read_text()) if d is not None]
    assert docs, "distributed/rayjob.yaml holds no document"
    return docs


def policy() -> dict[str, Any]:
    return json.loads((DIST / "iam-policy.json").read_text())


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def ray_pin() -> str:
    deps = pyproject()["project"]["dependencies"]
    pins = [re.fullmatch(r"ray(\[[^\]]*\])?==(\S+)", d.replace(" ", "")) for d in deps]
    versions = [m.group(2) for m in pins if m]
    assert len(versions) == 1, "pyproject.toml must pin ray with =="
    return versions[0]


@dataclass
class Image:
    """What distributed/Dockerfile builds: its base, where each copied repository path lands, its pip installs."""

    base: list[str]  # every FROM
    copies: dict[PurePosixPath, Path]  # path in the image -> repository path
    installs: list[tuple[PurePosixPath, list[str]]]  # (working dir, arguments after `pip install`)

    def repo_path(self, image_path: str) -> Path | None:
        """The repository file behind ``image_path``, if the build copied it there."""
        p = PurePosixPath(image_path)
        for dest, src in self.copies.items():
            if p == dest or dest in p.parents:
                return src / p.relative_to(dest)
        return None


def dockerfile() -> Image:
    """Follow distributed/Dockerfile's FROM / WORKDIR / COPY / RUN instructions (continuation lines joined)."""
    lines: list[str] = []
    buf = ""
    for raw in (DIST / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    assert not buf, "distributed/Dockerfile ends in a continuation line"
    image = Image(base=[], copies={}, installs=[])
    workdir = PurePosixPath("/")
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            image.base.append(rest.split()[0])
        elif word == "WORKDIR":
            workdir = workdir / rest.strip()
        elif word == "COPY":
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            *sources, dest = args
            target = workdir / dest
            for src in sources:
                # `COPY a b ./` puts a and b into the folder; `COPY src ./src` copies the folder src as ./src
                into = dest.endswith("/") or len(sources) > 1
                image.copies[target / PurePosixPath(src).name if into else target] = REPO / src
        elif word == "RUN":
            command: list[str] = []
            for token in shlex.split(rest) + ["&&"]:  # one shell command after another
                if token not in ("&&", "||", ";", "|"):
                    command.append(token)
                    continue
                if len(command) > 2 and command[0].endswith("pip") and command[1] == "install":
                    image.installs.append((workdir, command[2:]))
                command = []
    return image


@dataclass(frozen=True)
class Needs:
    """One Ray Train run's shape: this many workers, each with ``cpus`` CPUs (and one GPU if ``gpu``) on one node."""

    workers: int
    cpus: int
    gpu: bool


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as dotted keys (``{"distributed": {"workers": 2}}`` -> ``distributed.workers``)."""
    out: dict[str, Any] = {}
    for k, v in (tree or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def needs_of(keys: dict[str, Any]) -> Needs:
    """The distributed.* keys (dotted) over knnmix's defaults; in-process trials (workers 0) count as one."""
    d = C.Config().distributed
    return Needs(
        workers=max(int(keys.get("distributed.workers", d.workers)), 1),
        cpus=int(keys.get("distributed.cpus_per_worker", d.cpus_per_worker)),
        gpu=bool(keys.get("distributed.use_gpu", d.use_gpu)),
    )


def space_needs(path: Path, overrides: list[str] = ()) -> set[Needs]:
    """Read a search space with plain YAML: its base preset, ``base.set``, each noise setting's ``set`` and the
    ``--set`` overrides of a command line (``sweep.*`` ones change the space, not the runs)."""
    space = yaml.safe_load(path.read_text())
    base = space.get("base") or {}
    keys: dict[str, Any] = {}
    if base.get("config"):
        preset = Path(base["config"])
        keys.update(flatten(yaml.safe_load((preset if preset.suffix else PRESETS / f"{preset}.yaml").read_text())))
    keys.update(base.get("set") or {})
    for item in overrides:
        key, _, value = item.partition("=")
        if not key.startswith("sweep."):
            keys[key] = yaml.safe_load(value)
    settings = [keys] + [{**keys, **(n.get("set") or {})} for n in space.get("noise") or [] if isinstance(n, dict)]
    return {needs_of(s) for s in settings}


def per_unit(cpus: float, gpus: float, need: Needs) -> int:
    """Ray Train workers of shape ``need`` that one node (pod) with these CPUs and GPUs can hold."""
    n = int(cpus // need.cpus)
    return min(n, int(gpus)) if need.gpu else n


def cluster_capacity(cfg: dict[str, Any], need: Needs) -> int:
    """Most workers of shape ``need`` the cluster can run at once, within each node type's and the global
    ``max_workers`` (the head offers no CPUs to tasks; it is checked to)."""
    types = cfg["available_node_types"]
    assert per_unit(types[cfg["head_node_type"]]["resources"].get("CPU", 0), 0, need) == 0
    fits = sorted(
        ((per_unit(t["resources"].get("CPU", 0), t["resources"].get("GPU", 0), need),
          t.get("max_workers", cfg["max_workers"]))
         for name, t in types.items() if name != cfg["head_node_type"]),
        reverse=True,
    )
    budget, total = cfg["max_workers"], 0
    for per_node, nodes in fits:
        if per_node and budget:
            used = min(nodes, budget)
            total, budget = total + used * per_node, budget - used
    return total


def quantity(value: Any) -> float:
    """A Kubernetes CPU / GPU quantity ("4", 4, "500m") as a number."""
    s = str(value)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def rayjob_capacity(job: dict[str, Any], need: Needs) -> int:
    """Most workers of shape ``need`` the RayJob's worker pods can run at once (one Ray node per pod; Ray counts
    the container's CPU and nvidia.com/gpu limits unless rayStartParams say otherwise)."""
    total = 0
    for group in job["spec"]["rayClusterSpec"].get("workerGroupSpecs", []):
        limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        params = group.get("rayStartParams") or {}
        cpus = quantity(params.get("num-cpus", limits.get("cpu", 0)))
        gpus = quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        total += group.get("replicas", 1) * per_unit(cpus, gpus, need)
    return total


def all_spaces() -> list[Path]:
    spaces = sorted(SPACES.glob("*.yaml"))
    assert spaces, "no search spaces found"
    return spaces


# ---------------------------------------------------------------------------------------------------------------
# (a) cluster.yaml: Ray's autoscaler schema and checks


def test_cluster_yaml_is_valid_for_the_installed_rays_autoscaler():
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = cluster()
    jsonschema.validate(cfg, schema)
    # Ray's own preparation (what `ray up` does before launching: defaults merged, docker settings checked) and
    # checks (head type among the node types, min_workers within max_workers); offline, no AWS call.
    validate_config(prepare_config(copy.deepcopy(cfg)))
    # The schema catches a misspelt key (so the validation above is not vacuous).
    bad = copy.deepcopy(cfg)
    bad["docker"]["imgae"] = bad["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError, match="imgae"):
        jsonschema.validate(bad, schema)


# ---------------------------------------------------------------------------------------------------------------
# (b) rayjob.yaml: KubeRay's RayJob CRD


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema with ``additionalProperties: false`` on every object that lists its properties (unless it
    keeps unknown fields on purpose), so a misspelt field fails, as the shared README suggests."""
    node = dict(schema)
    if "properties" in node:
        node["properties"] = {k: closed(v) for k, v in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = closed(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = closed(node["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            node[key] = [closed(s) for s in node[key]]
    return node


@pytest.fixture(scope="module")
def rayjob_validator() -> jsonschema.protocols.Validator:
    crd_file = KUBERAY / "ray.io_rayjobs.yaml"
    if not crd_file.is_file():
        pytest.skip(f"{crd_file} is absent: validating rayjob.yaml needs KubeRay's RayJob CRD next to the repository "
                    "(../shared/kuberay, see its README.md)")
    crd = yaml.load(crd_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1.4 MB: libyaml
    assert crd["spec"]["names"]["kind"] == "RayJob"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(closed(version["schema"]["openAPIV3Schema"]))


def test_rayjob_yaml_is_a_valid_kuberay_rayjob(rayjob_validator):
    for job in rayjobs():
        assert (job.get("apiVersion"), job.get("kind")) == ("ray.io/v1", "RayJob")
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in rayjob_validator.iter_errors(job)]
        assert not errors, "\n".join(errors)
    # A misspelt field fails (Kubernetes would drop it silently: here it must not pass).
    bad = copy.deepcopy(rayjobs()[0])
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2
    assert any("replica" in e.message for e in rayjob_validator.iter_errors(bad))


# ---------------------------------------------------------------------------------------------------------------
# (c) the files run the shipped sweeps as written


def test_the_shipped_spaces_include_gpu_spaces():
    """Else the GPU checks below would check nothing."""
    assert any(n.gpu for p in all_spaces() for n in space_needs(p))


@pytest.mark.parametrize("space", all_spaces(), ids=lambda p: p.stem)
def test_cluster_node_types_fit_every_shipped_space(space):
    cfg = cluster()
    for need in space_needs(space):
        have = cluster_capacity(cfg, need)
        kind = f"{need.cpus} CPUs{' + 1 GPU' if need.gpu else ''}"
        assert have >= need.workers, (
            f"{space.name} needs {need.workers} Ray Train workers of {kind} each (on one node); cluster.yaml's worker "
            f"node types can run {have}"
        )


def test_gpu_node_types_give_their_container_the_gpus():
    cfg = cluster()
    gpu_types = {n: t for n, t in cfg["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "cluster.yaml has no node type with GPUs"
    for name, t in gpu_types.items():
        options = cfg["docker"].get("run_options", []) + (t.get("docker") or {}).get(
            "worker_run_options", cfg["docker"].get("worker_run_options", []))
        assert "--gpus all" in options, f"{name}: its container gets no GPU (docker run --gpus all)"


def test_cluster_runs_the_knnmix_image_keeps_token_auth_and_shared_storage_and_installs_nothing():
    cfg = cluster()
    image = cfg["docker"]["image"]
    assert not image.startswith("rayproject/"), "the nodes must run the knnmix image (distributed/Dockerfile)"
    assert not {"head_image", "worker_image"} & set(cfg["docker"]), "one image for head and workers"
    assert all("worker_image" not in (t.get("docker") or {}) for t in cfg["available_node_types"].values())
    assert {j["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
            for j in rayjobs()} == {image}, "cluster.yaml and rayjob.yaml run different images"
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
                for c in cfg.get(key) or []]
    assert not [c for c in commands if "pip install" in c], "the image has knnmix: no node installs it"
    # token authentication: the token file on every node, token mode on at every `ray start`
    assert any(remote.endswith(".ray/auth_token") for remote in cfg["file_mounts"])
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cfg[key]
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    # the shared EFS file system: mounted on each host, passed into the container at the same path
    assert any("mount -t nfs4" in c and "/mnt/shared" in c for c in cfg["initialization_commands"])
    assert "-v /mnt/shared:/mnt/shared" in cfg["docker"]["run_options"]


def test_dockerfile_installs_this_repository_on_the_pinned_ray_base():
    image = dockerfile()
    assert image.base == [f"rayproject/ray:{ray_pin()}-py311-gpu"], image.base
    need = re.fullmatch(r">=\s*3\.(\d+)", pyproject()["project"]["requires-python"])
    assert need and int(need.group(1)) <= 11, "the base image's Python 3.11 must satisfy requires-python"
    # `pip install .` (or the copy's path) of the copied repository: a folder holding this pyproject.toml, its
    # readme and every package folder it names.
    targets = [wd / a for wd, args in image.installs for a in args if not a.startswith("-")]
    installed = [t for t in targets if image.repo_path(str(t / "pyproject.toml")) == REPO / "pyproject.toml"]
    assert installed, f"no `pip install` of the copied repository in the Dockerfile: {image.installs}"
    project = pyproject()
    needed = [project["project"]["readme"], *project["tool"]["setuptools"]["package-dir"].values()]
    for rel in needed:
        assert image.repo_path(str(installed[0] / rel)) == REPO / rel, (
            f"the Dockerfile does not copy {rel} next to the pyproject.toml it installs ({installed[0]})")


def test_rayjob_runs_one_knnmix_image_and_installs_nothing():
    image = dockerfile()
    for job in rayjobs():
        spec = job["spec"]
        rc = spec["rayClusterSpec"]
        pods = [rc["headGroupSpec"]["template"]] + [g["template"] for g in rc.get("workerGroupSpecs", [])]
        if spec.get("submitterPodTemplate"):
            pods.append(spec["submitterPodTemplate"])
        images = {c["image"] for p in pods for c in p["spec"]["containers"]}
        assert len(images) == 1, f"head and workers must run the same image: {images}"
        assert not images.pop().startswith("rayproject/"), "the pods must run the knnmix image"
        assert rc["rayVersion"] == ray_pin() == image.base[0].split(":")[1].split("-")[0]
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
        assert not {"pip", "conda", "uv"} & set(runtime_env), "the image has knnmix and its dependencies"


def entrypoint_needs(entrypoint: str, image: Image) -> tuple[Needs, ...]:
    """Parse a RayJob entrypoint with the parser of the script it runs; what its Ray Train runs need."""
    from knnmix.cli import build_parser, load_config

    argv = shlex.split(entrypoint)
    if argv[0] == "knnmix":
        args = build_parser().parse_args(argv[1:])
        kind = args.command
    else:
        assert argv[0] in ("python", "python3"), f"entrypoint {argv[0]!r}: expected python SCRIPT or knnmix"
        script = image.repo_path(argv[1])
        assert script is not None and script.is_file(), f"{argv[1]} is not a file the Dockerfile puts in the image"
        spec = importlib.util.spec_from_file_location(f"_entry_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        args = module.build_parser().parse_args(argv[2:])  # an unknown flag fails here (SystemExit)
        kind = "sweep" if hasattr(args, "space") else "train"
    if kind == "train":
        x = load_config(args).distributed
        return (Needs(max(x.workers, 1), x.cpus_per_worker, x.use_gpu),)
    assert kind == "sweep", kind
    space = SPACES / f"{args.space}.yaml" if "/" not in args.space else image.repo_path(args.space)
    return tuple(space_needs(space, args.overrides))


def test_rayjob_entrypoint_is_in_the_image_and_its_workers_fit():
    image = dockerfile()
    for job in rayjobs():
        needs = entrypoint_needs(job["spec"]["entrypoint"], image)
        # The README (and the file's comment) run search_spaces/cifar10.yaml on the same cluster.
        needs += tuple(space_needs(SPACES / "cifar10.yaml"))
        for need in needs:
            assert rayjob_capacity(job, need) >= need.workers, (
                f"{job['metadata']['name']}: {need.workers} workers of {need.cpus} CPUs"
                f"{' + 1 GPU' if need.gpu else ''} do not fit its worker pods"
            )


def allows(stmts: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    """The statements whose Action (a string or list, with IAM's * wildcards) covers ``action``."""
    def actions(s: dict[str, Any]) -> list[str]:
        return [s["Action"]] if isinstance(s["Action"], str) else s["Action"]

    return [s for s in stmts if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions(s))]


def resources(stmts: list[dict[str, Any]]) -> set[str]:
    return {r for s in stmts for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])}


def test_iam_policy_lets_the_head_start_workers():
    doc = policy()
    assert doc["Version"] == "2012-10-17"
    stmts = doc["Statement"]
    assert all(s["Effect"] == "Allow" for s in stmts)
    sids = [s["Sid"] for s in stmts]
    assert len(set(sids)) == len(sids), "statement ids must be unique"
    missing = [a for a in HEAD_ACTIONS if not allows(stmts, a)]
    assert not missing, f"iam-policy.json lacks {missing}"

    cfg = cluster()
    types = cfg["available_node_types"]
    head_profile = types[cfg["head_node_type"]]["node_config"]["IamInstanceProfile"]["Arn"]
    worker_profiles = {t["node_config"]["IamInstanceProfile"]["Arn"] for n, t in types.items()
                       if n != cfg["head_node_type"]}
    assert len(worker_profiles) == 1 and head_profile not in worker_profiles, (head_profile, worker_profiles)
    worker_profile = worker_profiles.pop()
    account, name = re.fullmatch(r"arn:aws:iam::([^:]+):instance-profile/(.+)", worker_profile).groups()
    # The head passes the workers' role (named as its instance profile, as the README creates them) to EC2 and
    # reads that profile; without these no worker ever starts.
    assert f"arn:aws:iam::{account}:role/{name}" in resources(allows(stmts, "iam:PassRole"))
    assert worker_profile in resources(allows(stmts, "iam:GetInstanceProfile"))
    # Stopping and terminating are limited, if at all, to this cluster's instances.
    for s in allows(stmts, "ec2:TerminateInstances"):
        tags = (s.get("Condition") or {}).get("StringEquals", {})
        assert tags.get("ec2:ResourceTag/ray-cluster-name", cfg["cluster_name"]) == cfg["cluster_name"]


def test_iam_policy_worker_subset_reads_the_bucket_and_image_only():
    """The README gives the workers' role the statements whose Sid starts with WORKER_SIDS."""
    subset = [s for s in policy()["Statement"] if s["Sid"].startswith(WORKER_SIDS)]
    for action in ("s3:GetObject", "s3:PutObject", "s3:ListBucket", "ecr:GetAuthorizationToken", "ecr:BatchGetImage"):
        assert allows(subset, action), action
    for action in ("ec2:RunInstances", "ec2:TerminateInstances", "iam:PassRole"):
        assert not allows(subset, action), action


@pytest.mark.parametrize("script", ["train_job.py", "sweep_job.py"])
def test_a_submitted_job_refuses_paths_in_its_temporary_working_directory(script, tmp_path, monkeypatch, capsys):
    """A submitted job runs in a copy of its working dir that Ray deletes: a relative --out or SQLite store there
    would be lost with it (train_job.py's job 'succeeded' into it)."""
    spec = importlib.util.spec_from_file_location(f"_job_{Path(script).stem}", REPO / "distributed" / script)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {}}))  # what `ray job submit` sets
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = ["--config", "digits", "--workers", "2"] if script == "train_job.py" else ["smoke"]
    for flags, named in ((["--out", "runs/x"], "--out 'runs/x'"),
                         (["--out", str(tmp_path / "x"), "--tracking-uri", "sqlite:///m.db"],
                          "--tracking-uri (or MLFLOW_TRACKING_URI) 'm.db'")):
        assert job.main([*first, *flags]) == 2
        assert capsys.readouterr().err.strip() == (f"knnmix: error: {named} must be absolute in a submitted job (its "
                                                   "working directory is a temporary copy that Ray deletes)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///m.db")  # the store in the job's env_vars: read, as the flag
    assert job.main([*first, "--out", str(tmp_path / "x")]) == 2
    assert "MLFLOW_TRACKING_URI) 'm.db' must be absolute in a submitted job" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):  # no abbreviations: '--resume-if' is no flag of the job
        job.main([*first, "--out", str(tmp_path / "x"), "--resume-if"])
    assert "unrecognized arguments: --resume-if" in capsys.readouterr().err
    if script == "sweep_job.py":  # an interrupted sweep's hint: a submitted job is submitted again
        assert job.resume_command() == f"ray job submit -- python {REPO / 'distributed' / script}"  # a RayJob's
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}}))
        assert job.resume_command() == "ray job submit --working-dir . -- python distributed/sweep_job.py"
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(  # the README's $JOB_ENV goes with it again
            {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"KNNMIX_GIT_COMMIT": "c0ffee"}}}))
        assert job.resume_command() == ("ray job submit --working-dir . --runtime-env-json "
                                        """'{"env_vars": {"KNNMIX_GIT_COMMIT": "c0ffee"}}' -- python """
                                        "distributed/sweep_job.py")
        monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
        assert job.resume_command() == "python distributed/sweep_job.py"


def test_train_job_resumes_with_the_config_of_the_run_folder_set_by_set_out(tmp_path, monkeypatch, capsys):
    """`train_job.py --set out=DIR --resume-if-exists` read the config.yaml of the default run folder
    (runs/knnmix, any run there) instead of DIR's, as `knnmix train --set out=DIR --resume` does not."""
    spec = importlib.util.spec_from_file_location("_job_train_job", REPO / "distributed" / "train_job.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    monkeypatch.chdir(tmp_path)
    for folder, name in ((tmp_path / "runs" / "knnmix", "stray"), (tmp_path / "run", "mnist")):
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(f"data:\n  name: {name}\n")  # cannot load: shows which is read
    for flag in ("--resume", "--resume-if-exists"):
        assert job.main(["--set", f"out={tmp_path / 'run'}", "--workers", "2", flag]) == 2
        assert "unknown dataset 'mnist'" in capsys.readouterr().err


def test_a_source_tree_that_is_not_installed_finds_its_shipped_spaces():
    """distributed/sweep_job.py imports knnmix from ../src (the image's copy at /home/ray/knnmix, or a --working-dir
    upload), where knnmix.search_spaces is no package: the RayJob's `sweep_job.py cifar10` said "search space
    'cifar10' does not exist (shipped spaces: )" (the editable install of these tests hid it)."""
    import os
    import subprocess
    import sys
    import sysconfig

    code = "from knnmix.spaces import resolve_space_path; print(resolve_space_path('cifar10'))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), sysconfig.get_paths()["purelib"]])}
    found = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr[-2000:]
    assert Path(found.stdout.strip()) == SPACES / "cifar10.yaml"
