# Python half of conf/validate-deploy.sh: the checks that walk YAML and JSON
# (alert rules, the Grafana dashboard, the compose demo and the configs it
# mounts), the Dockerfile policy, and the helpers the driver pipes between
# tools (every PromQL expression as JSON, the dashboard's queries as recording
# rules, a Patroni service's compose environment, the locked rust-version).
# The driver runs it from the repository root with the tools venv's Python:
#   python conf/validate-deploy/checks.py SUBCOMMAND [ARGS]
import json, os, re, sys
import yaml

errors = []

def err(msg):
    errors.append(msg)

def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)

def finish():
    for e in errors:
        print("  " + e)
    sys.exit(1 if errors else 0)

# ---- alerts ----------------------------------------------------------------
REQUIRED_ALERTS = {
    "SwitchyardNoPrimary", "SwitchyardSplitBrain", "SwitchyardReplicaLagHigh",
    "SwitchyardPoolSaturated", "SwitchyardClientsWaitingForServer",
    "SwitchyardHealthCheckFailing", "SwitchyardConfigReloadFailed",
    "SwitchyardPrimaryChanged", "SwitchyardInstanceDown",
}

def alert_rules():
    doc = load_yaml("conf/prometheus/alerts.yml")
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield group["name"], rule

def cmd_alerts():
    seen = set()
    tests = open("conf/prometheus/alerts.test.yml").read()
    for group, rule in alert_rules():
        name = rule.get("alert")
        if not name:
            err(f"{group}: recording rule {rule.get('record')!r}: this file holds alerts only")
            continue
        if name in seen:
            err(f"{name}: defined twice")
        seen.add(name)
        if not re.fullmatch(r"Switchyard[A-Z][A-Za-z]+", name):
            err(f"{name}: alert names are SwitchyardCamelCase")
        severity = rule.get("labels", {}).get("severity")
        if severity not in ("critical", "warning", "info"):
            err(f"{name}: severity label must be critical, warning or info (got {severity!r})")
        ann = rule.get("annotations", {})
        if not ann.get("summary"):
            err(f"{name}: no summary annotation")
        if len(ann.get("description", "")) < 120:
            err(f"{name}: the description must tell the on-call what to check (120+ characters)")
        if not re.search(r"alertname: %s\b|alertname=\"%s\"" % (name, name), tests):
            err(f"{name}: no test in alerts.test.yml")
    for name in sorted(REQUIRED_ALERTS - seen):
        err(f"{name}: required alert is missing")
    finish()

# ---- expressions for the PromQL checks -------------------------------------
GRAFANA_RANGE = re.compile(r"\[\$\{?__(rate_interval|interval|range)\}?\]")

def grafana_expr(expr):
    # Grafana's range variables are not PromQL; any other $ outside a string
    # literal stays and fails the parse.
    return GRAFANA_RANGE.sub("[5m]", expr)

def cmd_exprs():
    out = []
    for group, rule in alert_rules():
        out.append({"where": f"alerts.yml {rule.get('alert')}", "expr": rule["expr"]})
        for key, text in rule.get("annotations", {}).items():
            for q in re.findall(r'query\s+"((?:[^"\\]|\\.)*)"', text):
                out.append({"where": f"alerts.yml {rule.get('alert')} annotation {key}",
                            "expr": json.loads('"' + q + '"')})
    dash = json.load(open("conf/grafana/switchyard-dashboard.json"))
    for panel in all_panels(dash):
        for t in panel.get("targets", []):
            out.append({"where": f"dashboard panel {panel.get('title')!r} {t.get('refId')}",
                        "expr": grafana_expr(t.get("expr", "")),
                        "legend": t.get("legendFormat", "")})
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append({"where": f"dashboard annotation {a.get('name')!r}", "expr": grafana_expr(a["expr"])})
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q)
        if not m:
            err(f"dashboard variable {v.get('name')}: expected label_values(selector, label), got {q!r}")
            continue
        out.append({"where": f"dashboard variable {v.get('name')}", "expr": m.group(1),
                    "extra_labels": [m.group(2)]})
    if errors:
        finish()
    json.dump(out, sys.stdout)

def cmd_dashboard_rules():
    # Every dashboard expression as a recording rule, so promtool's parser
    # (types included: rate() of a gauge vector, etc.) checks them too.
    rules = []
    for i, e in enumerate(json.load(sys.stdin)):
        if e["where"].startswith("dashboard"):
            rules.append({"record": f"dashboard:expr_{i}", "expr": e["expr"]})
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sys.stdout)

# ---- grafana ------------------------------------------------------------------
def all_panels(dash):
    for p in dash.get("panels", []):
        yield p
        for q in p.get("panels", []):
            yield q

# Keys Grafana reads that the schema types of grafana-foundation-sdk do not
# model: import metadata, the Prometheus annotation fields, and a variable's
# display definition.
ROUNDTRIP_ALLOWED = {
    "__requires", "__inputs",
    "annotations.list[].step", "annotations.list[].titleFormat", "annotations.list[].textFormat",
    "annotations.list[].tagKeys", "annotations.list[].useValueForTime",
    "templating.list[].definition",
}

def roundtrip(dash):
    from grafana_foundation_sdk.models.dashboard import Dashboard
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    back = json.loads(json.dumps(Dashboard.from_json(dash), cls=JSONEncoder))
    def walk(a, b, path, shape):
        if isinstance(a, dict):
            for k, v in a.items():
                key_shape = f"{shape}.{k}" if shape else k
                if not isinstance(b, dict) or k not in b:
                    if key_shape not in ROUNDTRIP_ALLOWED:
                        err(f"dashboard: {path}.{k} is not part of Grafana's dashboard schema")
                else:
                    walk(v, b[k], f"{path}.{k}", key_shape)
        elif isinstance(a, list) and isinstance(b, list):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]", shape + "[]")
    walk(dash, back, "", "")

def cmd_grafana():
    dash = json.load(open("conf/grafana/switchyard-dashboard.json"))
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in dash:
            err(f"dashboard: no {key}")
    if dash.get("schemaVersion", 0) < 36:
        err("dashboard: schemaVersion below 36 (Grafana 9+)")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        err("dashboard: needs a templated Prometheus datasource variable named 'datasource'")
    want_ds = {"type": "prometheus", "uid": "${datasource}"}
    ids, boxes, required = set(), [], {r["id"] for r in dash.get("__requires", []) if r.get("type") == "panel"}
    text = json.dumps(dash)
    for name in set(re.findall(r"\$\{?([A-Za-z]\w*)", text)):
        if name not in variables:
            err(f"dashboard: ${name} is used but not a dashboard variable")
    for p in all_panels(dash):
        title = p.get("title", "?")
        if p.get("id") in ids:
            err(f"panel {title!r}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["w"] < 1 or g["x"] < 0 or g["x"] + g["w"] > 24 or g["h"] < 1:
            err(f"panel {title!r}: gridPos must fit the 24-column grid, got {g}")
        else:
            for other, og in boxes:
                if g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"] and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]:
                    err(f"panel {title!r} overlaps panel {other!r}")
            boxes.append((title, g))
        if p.get("type") == "row":
            continue
        if p.get("type") not in required:
            err(f"panel {title!r}: panel type {p.get('type')!r} missing from __requires")
        if p.get("datasource") != want_ds:
            err(f"panel {title!r}: datasource must be {want_ds}")
        if not p.get("description"):
            err(f"panel {title!r}: no description (the panel's hover help)")
        targets = p.get("targets", [])
        if not targets:
            err(f"panel {title!r}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            err(f"panel {title!r}: refIds must be present and unique, got {refs}")
        for t in targets:
            if t.get("datasource") != want_ds or not t.get("expr"):
                err(f"panel {title!r} {t.get('refId')}: needs expr and datasource {want_ds}")
    for a in dash.get("annotations", {}).get("list", []):
        if not a.get("builtIn") and a.get("datasource") != want_ds:
            err(f"annotation {a.get('name')!r}: datasource must be {want_ds}")
    roundtrip(dash)
    finish()

# ---- dockerfiles -------------------------------------------------------------
def dockerignore(context):
    path = os.path.join(context, ".dockerignore")
    rules = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line and not line.startswith("#"):
                neg = line.startswith("!")
                pat = line.lstrip("!").strip("/")
                rules.append((neg, pat))
    return rules

def pattern_regex(pat):
    # Docker's .dockerignore syntax: Go's filepath.Match per path segment
    # ("*" and "?" stop at "/"), plus "**" for any number of segments.
    out, i = "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pat[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out + r"\Z")

def ignored(rules, rel):
    # A path is excluded when it or a directory above it matches; the last
    # matching rule wins, and "!" rules re-include.
    parts = os.path.normpath(rel).split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for neg, pat in rules:
        if any(pattern_regex(pat).match(p) for p in prefixes):
            result = not neg
    return result

def image_pinned(image):
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and not name.endswith(":latest")

def dockerfile_policy(path, context, expose=(), rust_version=None):
    import dockerfile
    cmds = dockerfile.parse_file(path)
    rules = dockerignore(context)
    stages, last = [], []
    for c in cmds:
        if c.cmd == "FROM":
            stages.append(c.value[2] if len(c.value) >= 3 and c.value[1].upper() == "AS" else None)
            last = []
            image = c.value[0]
            if image not in stages[:-1] and not image_pinned(image):
                err(f"{path}:{c.start_line}: base image {image} must carry a version tag (not latest)")
            m = re.match(r"rust:(\d+\.\d+)", image)
            if m and rust_version and tuple(map(int, m.group(1).split("."))) < tuple(map(int, rust_version.split(".")[:2])):
                err(f"{path}:{c.start_line}: {image} is older than the rust-version {rust_version} the locked dependencies need")
        last.append(c)
        if c.cmd == "ADD":
            err(f"{path}:{c.start_line}: use COPY, not ADD, for local files")
        if c.cmd == "COPY":
            frm = [f.split("=", 1)[1] for f in c.flags if f.startswith("--from=")]
            if frm:
                if frm[0] not in stages[:-1]:
                    err(f"{path}:{c.start_line}: COPY --from={frm[0]} names no earlier stage")
                continue
            for src in c.value[:-1]:
                if not os.path.exists(os.path.join(context, src)):
                    err(f"{path}:{c.start_line}: COPY source {src} does not exist in the build context {context}")
                elif ignored(rules, src):
                    err(f"{path}:{c.start_line}: COPY source {src} is excluded by {context}/.dockerignore")
        if c.cmd == "RUN" and "apt-get install" in c.value[0]:
            if "--no-install-recommends" not in c.value[0]:
                err(f"{path}:{c.start_line}: apt-get install without --no-install-recommends")
            if "rm -rf /var/lib/apt/lists" not in c.value[0]:
                err(f"{path}:{c.start_line}: apt lists must be removed in the same RUN")
    final = {c.cmd: c for c in last}
    user = final.get("USER")
    if not user or user.value[0].split(":")[0] in ("root", "0"):
        err(f"{path}: the final stage must switch to a non-root USER")
    hc = final.get("HEALTHCHECK")
    if not hc or hc.value[0].upper() != "CMD":
        err(f"{path}: the final stage needs a HEALTHCHECK with a command")
    if "STOPSIGNAL" not in final:
        err(f"{path}: no STOPSIGNAL")
    for name in ("ENTRYPOINT", "CMD"):
        if name in final and not final[name].json:
            err(f"{path}: {name} must use the exec (JSON) form so signals reach the process")
    if "ENTRYPOINT" not in final:
        err(f"{path}: no ENTRYPOINT")
    exposed = {p.split("/")[0] for c in last if c.cmd == "EXPOSE" for p in c.value}
    for port in expose:
        if port not in exposed:
            err(f"{path}: does not EXPOSE {port}")

def cmd_dockerfile(rust_version):
    dockerfile_policy("docker/Dockerfile", ".", expose=("5000", "5001", "8080"), rust_version=rust_version)
    dockerfile_policy("docker/patroni/Dockerfile", "docker/patroni", expose=("5432", "8008"))
    finish()

# ---- compose -----------------------------------------------------------------
def dockerfile_has_healthcheck(path):
    import dockerfile
    stages = [[]]
    for c in dockerfile.parse_file(path):
        if c.cmd == "FROM":
            stages.append([])
        stages[-1].append(c)
    return any(c.cmd == "HEALTHCHECK" and c.value[0].upper() == "CMD" for c in stages[-1])

def cmd_compose():
    path = "docker/docker-compose.yml"
    base = os.path.dirname(path)
    raw = open(path).read()
    for m in re.finditer(r"(?<!\$)\$\{([^}]*)\}", raw):
        if not re.fullmatch(r"[A-Za-z_]\w*:-[^}]*", m.group(1)):
            err(f"{path}: ${{{m.group(1)}}} needs a default (${{VAR:-value}}) so `docker compose up` works as is")
    doc = load_yaml(path)
    services = doc.get("services", {})
    named_volumes = set((doc.get("volumes") or {}).keys())
    published = {}
    dockerfiles = {}
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            if not isinstance(build, dict):
                build = {"context": build}
            ctx = os.path.normpath(os.path.join(base, build["context"]))
            df = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
            if not os.path.isdir(ctx):
                err(f"{name}: build context {ctx} does not exist")
            elif not os.path.isfile(df):
                err(f"{name}: {df} does not exist")
            else:
                dockerfiles[name] = df
        elif not image_pinned(svc.get("image", "")):
            err(f"{name}: image {svc.get('image')!r} must carry a version tag (not latest)")
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            if dep not in services:
                err(f"{name}: depends_on {dep}, which is not a service")
                continue
            if spec.get("condition") == "service_healthy":
                target = services[dep]
                has = ("healthcheck" in target and not target["healthcheck"].get("disable")) or \
                      (dep in dockerfiles and dockerfile_has_healthcheck(dockerfiles[dep]))
                if not has:
                    err(f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")):
                if not os.path.exists(os.path.join(base, src)):
                    err(f"{name}: bind mount source {src} does not exist (relative to {base})")
            elif src not in named_volumes:
                err(f"{name}: volume {src} is not declared under volumes:")
        for port in svc.get("ports", []):
            parts = str(port).split(":")
            host = ":".join(parts[:-1])
            if host in published:
                err(f"{name}: host port {host} is also published by {published[host]}")
            published[host] = name
    cross_check(services, base)
    finish()

def cross_check(services, base):
    sy = {n: s for n, s in services.items()
          if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == "docker/Dockerfile"}
    pg = {n: s for n, s in services.items()
          if isinstance(s.get("build"), dict) and s["build"].get("context") == "patroni"}
    if len(sy) < 2 or len(pg) < 3:
        err(f"compose: expected two Switchyard and three Patroni services, found {sorted(sy)} and {sorted(pg)}")
    # Switchyard services: their config's nodes are the Patroni services, and
    # what they listen on is what they publish and Prometheus scrapes.
    admin_ports = {}
    for name, svc in sy.items():
        mounts = [v.split(":") for v in svc.get("volumes", []) if isinstance(v, str)]
        conf = [m for m in mounts if len(m) >= 2 and m[1] == "/etc/switchyard/switchyard.yaml"]
        if not conf:
            err(f"{name}: mounts no /etc/switchyard/switchyard.yaml")
            continue
        cfg = load_yaml(os.path.join(base, conf[0][0]))
        cmd = svc.get("command", [])
        if "/etc/switchyard/switchyard.yaml" not in cmd:
            err(f"{name}: command does not run /etc/switchyard/switchyard.yaml")
        for node in cfg["cluster"]["nodes"]:
            host = node["host"]
            if host not in pg:
                err(f"{name}: node {node['name']} has host {host}, which is not a Patroni service")
            if node.get("api") != f"http://{host}:8008":
                err(f"{name}: node {node['name']} api must be http://{host}:8008")
            if node.get("port", 5432) != 5432:
                err(f"{name}: node {node['name']} port must be 5432")
        listen_ports = {l["listen"].rsplit(":", 1)[1] for l in cfg["listeners"]}
        admin = cfg["admin"]["listen"]
        if not admin.startswith("0.0.0.0:"):
            err(f"{name}: admin.listen {admin} must be 0.0.0.0 for Prometheus to scrape it")
        admin_ports[name] = admin.rsplit(":", 1)[1]
        container_ports = {str(p).rsplit(":", 1)[1] for p in svc.get("ports", [])}
        for p in listen_ports | {admin_ports[name]}:
            if p not in container_ports:
                err(f"{name}: port {p} (from its config) is not published")
        if "SWITCHYARD_APP_PASSWORD" not in (svc.get("environment") or {}):
            err(f"{name}: SWITCHYARD_APP_PASSWORD not in its environment")
    prom = load_yaml("conf/prometheus/prometheus.yml")
    jobs = {j["job_name"]: j for j in prom.get("scrape_configs", [])}
    if "switchyard" not in jobs:
        err("prometheus.yml: no job named switchyard (the alerts select on it)")
    else:
        targets = {t for sc in jobs["switchyard"].get("static_configs", []) for t in sc.get("targets", [])}
        want = {f"{n}:{p}" for n, p in admin_ports.items()}
        if targets != want:
            err(f"prometheus.yml: switchyard targets {sorted(targets)} differ from the compose services {sorted(want)}")
    for rule_file in prom.get("rule_files", []):
        if not os.path.exists(os.path.join("conf/prometheus", rule_file)):
            err(f"prometheus.yml: rule file {rule_file} does not exist")
    # Patroni services: the entrypoint's required variables are all set, and
    # the member name is the host name the proxies use.
    entry = open("docker/patroni/entrypoint.sh").read()
    required = set(re.findall(r':\s*"\$\{(\w+):\?', entry))
    for name, svc in pg.items():
        env = svc.get("environment") or {}
        for var in sorted(required - set(env)):
            err(f"{name}: {var} is required by docker/patroni/entrypoint.sh but not set")
        if env.get("PATRONI_NAME") != name or svc.get("hostname", name) != name:
            err(f"{name}: PATRONI_NAME and hostname must equal the service name")

def cmd_patroni_env(service):
    # The environment compose gives a Patroni service, defaults applied, as
    # shell assignments (for patroni --validate-config).
    doc = load_yaml("docker/docker-compose.yml")
    env = doc["services"][service].get("environment") or {}
    for k, v in env.items():
        v = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
        print(f"{k}={v}")

def cmd_rust_version():
    meta = json.load(sys.stdin)
    versions = [tuple(int(x) for x in p["rust_version"].split(".")[:2])
                for p in meta["packages"] if p.get("rust_version")]
    print(".".join(map(str, max(versions))))

if __name__ == "__main__":
    cmd = sys.argv[1]
    args = sys.argv[2:]
    {"alerts": cmd_alerts, "exprs": cmd_exprs, "dashboard-rules": cmd_dashboard_rules,
     "grafana": cmd_grafana, "dockerfile": cmd_dockerfile, "compose": cmd_compose,
     "patroni-env": cmd_patroni_env, "rust-version": cmd_rust_version}[cmd](*args)
