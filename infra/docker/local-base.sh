#!/usr/bin/env bash
# Make the base image the Dockerfiles start FROM (debian:bookworm-slim) without a container registry:
# debootstrap a minimal Debian bookworm root from the Debian mirror apt already uses, and import it into
# buildah's local storage under the exact name the Dockerfile's FROM line uses. Idempotent: does nothing
# when the image is already there. Only for machines that cannot pull from a registry (CI sandboxes);
# a real build pulls the pinned base by digest (see infra/README.md).
#   usage: infra/docker/local-base.sh [IMAGE_NAME]     (default docker.io/library/debian:bookworm-slim)
set -euo pipefail
NAME="${1:-docker.io/library/debian:bookworm-slim}"
SUITE=bookworm
BUILDAH=(buildah --storage-driver "$("$(dirname "${BASH_SOURCE[0]}")/storage-driver.sh")")

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed; fix: make sysdeps (apt-get install -y $tool)" >&2; exit 2; }
done
if "${BUILDAH[@]}" inspect --type image "$NAME" >/dev/null 2>&1; then
  echo "==> base image $NAME already in local storage"
  exit 0
fi

# The mirror apt already uses here (deb822 .sources or a one-line sources.list), never hard-coded.
MIRROR="${DEBIAN_MIRROR:-}"
if [[ -z "$MIRROR" ]]; then
  MIRROR=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)
fi
if [[ -z "$MIRROR" ]]; then
  MIRROR=$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1 || true)
fi
[[ -n "$MIRROR" ]] || { echo "error: no Debian mirror found in apt's sources; fix: set DEBIAN_MIRROR=<url>" >&2; exit 2; }

WORK=$(mktemp -d /var/tmp/llmops-base.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "==> debootstrap $SUITE (minbase) from $MIRROR"
start=$(date +%s)
debootstrap --variant=minbase "$SUITE" "$WORK/root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$WORK/debootstrap.log" >&2; echo "error: debootstrap failed (log above)" >&2; exit 1; }
# Slim like the official image: no apt lists, caches, docs or man pages.
rm -rf "$WORK/root/var/lib/apt/lists/"* "$WORK/root/var/cache/apt/"*.bin "$WORK/root/usr/share/doc/"* \
       "$WORK/root/usr/share/man/"* "$WORK/root/usr/share/locale/"*
echo "deb $MIRROR $SUITE main" >"$WORK/root/etc/apt/sources.list"
tar -C "$WORK/root" -cf "$WORK/root.tar" .
ctr=$("${BUILDAH[@]}" from scratch)
"${BUILDAH[@]}" add "$ctr" "$WORK/root.tar" / >/dev/null
"${BUILDAH[@]}" config --cmd '["bash"]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
"${BUILDAH[@]}" commit --quiet --rm "$ctr" "$NAME" >/dev/null
echo "==> base image $NAME imported in $(( $(date +%s) - start )) s"
