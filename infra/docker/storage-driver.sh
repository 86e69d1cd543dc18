#!/usr/bin/env bash
# Print the buildah storage driver to use: $BUILDAH_STORAGE_DRIVER when set, else overlay where this kernel
# mounts it for buildah (layers stored as diffs: ~3 GB for the CPU image), else vfs (every layer a full copy
# of the filesystem: ~3 GB per layer after the dependencies, 12 GB free needed for a code-only rebuild).
# One place for the choice: build.sh, local-base.sh and tests/infra/test_image_build.py all ask here.
set -uo pipefail
if [[ -n "${BUILDAH_STORAGE_DRIVER:-}" ]]; then echo "$BUILDAH_STORAGE_DRIVER"; exit 0; fi
ctr=$(buildah --storage-driver overlay from --quiet scratch 2>/dev/null) || { echo vfs; exit 0; }
if buildah --storage-driver overlay mount "$ctr" >/dev/null 2>&1; then driver=overlay; else driver=vfs; fi
buildah --storage-driver overlay rm "$ctr" >/dev/null 2>&1
echo "$driver"
