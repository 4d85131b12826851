#!/bin/sh
# build-deb.sh: builds dist/passgate_VERSION_ARCH.deb from this checkout with
# nfpm (run with "go run", so it never enters go.mod), without Docker.
#   packaging/build-deb.sh [VERSION]
# VERSION defaults to 0.0.0~git<commit date>.<short commit>.
set -eu
cd "$(dirname "$0")/.."
NFPM_VERSION=${NFPM_VERSION:-v2.45.2}
GOARCH=$(go env GOARCH)
if [ $# -ge 1 ]; then
	PASSGATE_VERSION=$1
else
	PASSGATE_VERSION="0.0.0~git$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S 2>/dev/null || date -u +%Y%m%d%H%M%S).$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
fi
export GOARCH PASSGATE_VERSION
mkdir -p dist
CGO_ENABLED=0 go build -trimpath -buildvcs=auto -o dist/passgate ./cmd/passgate
# The unit in configs/ is for a binary installed by hand in /usr/local/bin.
sed 's#/usr/local/bin/passgate#/usr/bin/passgate#g' configs/passgate.service >dist/passgate.service
rm -f dist/passgate_*.deb
go run "github.com/goreleaser/nfpm/v2/cmd/nfpm@${NFPM_VERSION}" package --config packaging/nfpm.yaml --packager deb --target dist/
ls dist/passgate_*.deb
