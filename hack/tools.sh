#!/usr/bin/env bash
# Builds the tools the test suite needs, from source, at pinned versions, into .tools/bin/ (ignored by git):
#
#   kube-apiserver, kubectl   k8s.io/kubernetes   (hack/k8s-tools/kubernetes/go.mod)
#   etcd                      go.etcd.io/etcd/server/v3   (hack/k8s-tools/etcd/go.mod)
#   helm3                     helm.sh/helm/v3/cmd/helm    (hack/k8s-tools/helm3/go.mod)
#   helm                      helm.sh/helm/v4/cmd/helm    (hack/k8s-tools/helm4/go.mod)
#
# The versions are the ones those go.mod files require; their go.sum files, committed, checksum every module
# the builds download (the builds run with -mod=readonly, so a go.sum that does not cover a module fails the
# build instead of being extended). Needs only Go (1.26 or newer) and the Go module proxy. Idempotent: a binary
# is rebuilt only when its recipe (Go version, go.mod, go.sum, flags) differs from the stamp written beside it,
# so a second run takes about a second. The module and build caches live in .tools/ too, so that a rebuild
# after a version bump recompiles only what changed. A cold build (empty .tools/) took about 16 minutes on
# a 2-core machine; see e2e/README.md.
#
# Usage: bash hack/tools.sh            build what is missing or stale, print each tool's time
#        bash hack/tools.sh --print    print the bin directory (for PATH) and do nothing else
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
MODS="$ROOT/hack/k8s-tools"

if [ "${1:-}" = "--print" ]; then
  echo "$BIN"
  exit 0
fi

if ! command -v go >/dev/null; then
  echo "hack/tools.sh: 'go' is not on PATH; install Go 1.26 or newer (https://go.dev/dl/)" >&2
  exit 1
fi

mkdir -p "$BIN"
export GOMODCACHE="$TOOLS/gomod"
export GOCACHE="$TOOLS/gocache"
export GOTOOLCHAIN=local    # never fetch another toolchain behind our back
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0        # static binaries, no C compiler needed (as the upstream release builds)

# One run at a time (a second one waits, then finds everything built).
if command -v flock >/dev/null; then
  exec 9>"$TOOLS/.lock"
  flock 9
fi

GO_VERSION="$(go env GOVERSION)"

# build NAME MODULE_DIR MODULE PACKAGE [extra -ldflags...]
build() {
  local name="$1" moddir="$MODS/$2" version="$3 $(pinned "$2" "$3")" pkg="$4"
  shift 4
  local ldflags="-s -w $*"
  local out="$BIN/$name" stamp="$BIN/.$name.stamp"
  local recipe
  recipe="$(printf '%s\n' "tool $name" "package $pkg" "go $GO_VERSION" "ldflags $ldflags" "GOFLAGS $GOFLAGS" \
    "$(sha256sum "$moddir/go.mod" "$moddir/go.sum" | sed "s|$ROOT/||")")"
  if [ -x "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ]; then
    printf '%-15s reused (%s)\n' "$name" "$version"
    return 0
  fi
  local start=$SECONDS
  printf '%-15s building %s (%s) ...\n' "$name" "$pkg" "$version"
  rm -f "$stamp"
  (cd "$moddir" && go build -trimpath -ldflags="$ldflags" -o "$out.tmp" "$pkg")
  mv -f "$out.tmp" "$out"
  printf '%s\n' "$recipe" >"$stamp"
  printf '%-15s built in %d s (%s)\n' "$name" "$((SECONDS - start))" "$(du -h "$out" | cut -f1)"
}

# The module version pinned in DIR/go.mod (no download needed).
pinned() {
  (cd "$MODS/$1" && go list -m -f '{{.Version}}' "$2")
}

total_start=$SECONDS

# Kubernetes: the version variables the release build sets (hack/lib/version.sh), so that the API server and
# kubectl report v1.35.x instead of v0.0.0-master (helm checks a chart's kubeVersion against the server's).
K8S_VERSION="$(pinned kubernetes k8s.io/kubernetes)"
K8S_MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"
k8s_ldflags=()
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  k8s_ldflags+=("-X $pkg.gitVersion=$K8S_VERSION" "-X $pkg.gitMajor=1" "-X $pkg.gitMinor=$K8S_MINOR"
    "-X $pkg.gitTreeState=clean")
done
build kube-apiserver kubernetes k8s.io/kubernetes k8s.io/kubernetes/cmd/kube-apiserver "${k8s_ldflags[@]}"
build kubectl kubernetes k8s.io/kubernetes k8s.io/kubernetes/cmd/kubectl "${k8s_ldflags[@]}"

build etcd etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3

# helm 3 reports the Kubernetes version of its client-go as its default capabilities (helm template, lint)
# only when told so at link time, as its Makefile does; helm 4 reads it from the build info by itself.
HELM3_VERSION="$(pinned helm3 helm.sh/helm/v3)"
HELM3_KUBE_MINOR="$(pinned helm3 k8s.io/client-go | cut -d. -f2)"
build helm3 helm3 helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM3_VERSION" \
  "-X helm.sh/helm/v3/internal/version.metadata=" \
  "-X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1" \
  "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM3_KUBE_MINOR" \
  "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1" \
  "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM3_KUBE_MINOR"
HELM4_VERSION="$(pinned helm4 helm.sh/helm/v4)"
build helm helm4 helm.sh/helm/v4 helm.sh/helm/v4/cmd/helm \
  "-X helm.sh/helm/v4/internal/version.version=$HELM4_VERSION" \
  "-X helm.sh/helm/v4/internal/version.metadata=" \
  "-X helm.sh/helm/v4/internal/version.gitTreeState=clean"

echo "tools ready in $BIN ($((SECONDS - total_start)) s)"
