# shellcheck shell=bash
# Builds the real control plane of testenv/ (etcd, kube-apiserver, kube-controller-manager from
# Kubernetes' own Go modules) and exports CRABGLAMP_TESTENV, the binary the tests start once per
# test binary. Go's module and build caches make every build after the first a relink; the
# binary itself lives outside the checkout. Sourced after scripts/lib/services.sh (log, die).

# The Kubernetes release testenv/go.mod pins: what the server reports at /version.
TESTENV_KUBE_VERSION=v1.37.2

ensure_testenv() {
  command -v go >/dev/null 2>&1 || die "Go is needed to build the real control plane in testenv/ (Debian: apt-get install golang, or a Go toolchain >= $(sed -n 's/^go //p' testenv/go.mod))"
  local out="${CRABGLAMP_TESTENV_DIR:-$HOME/.cache/crabglamp-testenv}/testenv"
  local major minor
  major=${TESTENV_KUBE_VERSION#v}; major=${major%%.*}
  minor=${TESTENV_KUBE_VERSION#v*.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  log "building the real control plane (testenv/, Kubernetes $TESTENV_KUBE_VERSION)"
  # -trimpath and a fixed build date: the same sources give the same binary.
  (cd testenv && go build -trimpath -o "$out" -ldflags "-X $pkg.gitVersion=$TESTENV_KUBE_VERSION \
      -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean \
      -X $pkg.buildDate=1970-01-01T00:00:00Z" .) || die "go build of testenv/ failed"
  export CRABGLAMP_TESTENV="$out"
}
