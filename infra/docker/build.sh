#!/usr/bin/env bash
# Build and tag the project's images: cpu (validate/evaluate/register/serve/canary/monitor), cuda (train),
# trtllm (compile_engine). Names come from settings (LLMOPS_IMAGE_REGISTRY, LLMOPS_IMAGE_TAG, or the full
# LLMOPS_IMAGE / LLMOPS_TRAIN_IMAGE / LLMOPS_TRTLLM_IMAGE), so components and images always agree.
# Uses docker when a daemon answers, else buildah (daemonless: vfs storage, chroot isolation, works as root
# without a container runtime). Run from anywhere; builds from the repo root.
#   usage: infra/docker/build.sh [--push] [cpu|cuda|trtllm ...]      (default: cpu cuda trtllm)
#   env:   PYTHON (the project's python, for settings), TORCH_INDEX_URL (override), BUILDER=docker|buildah
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PUSH=0
KINDS=()
for arg in "$@"; do
  case "$arg" in
    --push) PUSH=1 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    cpu|cuda|trtllm) KINDS+=("$arg") ;;
    *) echo "error: unknown image kind '$arg'; fix: one of cpu, cuda, trtllm (or --push)" >&2; exit 2 ;;
  esac
done
[[ ${#KINDS[@]} -gt 0 ]] || KINDS=(cpu cuda trtllm)

# --- builder -------------------------------------------------------------------------------------------
BUILDER="${BUILDER:-}"
if [[ -z "$BUILDER" ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then BUILDER=docker
  elif command -v buildah >/dev/null; then BUILDER=buildah
  else echo "error: neither a docker daemon nor buildah found; fix: install buildah (make sysdeps) or start docker" >&2; exit 2
  fi
fi
if [[ "$BUILDER" == buildah ]]; then
  BUILDAH_STORAGE_DRIVER="$("$ROOT/infra/docker/storage-driver.sh")"; export BUILDAH_STORAGE_DRIVER
  echo "==> buildah storage driver: $BUILDAH_STORAGE_DRIVER"
fi
BUILDAH=(buildah --storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")

# --- names from settings (one place) ----------------------------------------------------------------------
read -r IMG_CPU IMG_CUDA IMG_TRTLLM < <("$PYTHON" -c \
  "from llmops.settings import get_settings as g; s = g(); print(s.image, s.train_image, s.trtllm_image)")

# --- pip settings for the build ---------------------------------------------------------------------------
# A machine whose PyPI access needs its own CA bundle / index / wheel dirs passes them to the build as a
# generated pip.conf and read-only mounts (buildah only): nothing of it lands in the image or in git.
BUILD_TMP=$(mktemp -d /var/tmp/llmops-build.XXXXXX)
trap 'rm -rf "$BUILD_TMP"' EXIT
PIP_ARGS=()
pip_value() {  # last value of a pip setting (env beats files), '' if unset
  python3 -m pip config list 2>/dev/null | grep -E "^(global|install|:env:)\.$1=" | tail -1 | cut -d= -f2- | tr -d "'\"" || true
}
if [[ "$BUILDER" == buildah ]]; then
  conf="$BUILD_TMP/pip.conf"
  echo "[global]" >"$conf"
  cert="$(pip_value cert)"
  if [[ -n "$cert" && -f "$cert" ]]; then
    PIP_ARGS+=(-v "$cert:/run/llmops-build-ca.crt:ro"); echo "cert = /run/llmops-build-ca.crt" >>"$conf"
  fi
  for key in index-url extra-index-url find-links; do
    val="$(pip_value "$key")"
    [[ -n "$val" ]] || continue
    echo "$key = $val" >>"$conf"
    for item in $val; do  # local wheel dirs / file:// indexes must be visible inside the build
      path="${item#file://}"
      # a file:// index links its wheels relative to its root: mount the directory above .../simple
      [[ "$item" == file://* && "$(basename "$path")" == simple ]] && path="$(dirname "$path")"
      if [[ "$path" == /* && -e "$path" ]]; then PIP_ARGS+=(-v "$path:$path:ro"); fi
    done
  done
  PIP_ARGS+=(-v "$BUILD_TMP:/run/llmops-build:ro" --build-arg PIP_CONFIG_FILE=/run/llmops-build/pip.conf)
fi

reachable() { curl -s -o /dev/null --max-time 8 "$1/"; }

# --- base image: pull, or (no registry reachable, buildah) make it locally with debootstrap ------------------
ensure_base() {  # $1 Dockerfile
  local base
  base=$(grep -m1 -E '^ARG BASE_IMAGE=' "$1" | cut -d= -f2-)
  [[ -n "$base" && "$BUILDER" == buildah ]] || return 0
  "${BUILDAH[@]}" inspect --type image "$base" >/dev/null 2>&1 && return 0
  "${BUILDAH[@]}" pull --quiet "$base" >/dev/null 2>&1 && return 0
  if [[ "$base" == */debian:bookworm-slim ]]; then
    echo "==> $base cannot be pulled (no registry reachable): making it from Debian's packages"
    "$ROOT/infra/docker/local-base.sh" "$base"
  else
    echo "error: base image $base is neither in local storage nor pullable; fix: make a registry reachable (or load the image)" >&2
    return 1
  fi
}

build_one() {  # kind
  local kind=$1 file="infra/docker/$1/Dockerfile" name args=()
  case "$kind" in
    cpu) name=$IMG_CPU ;;
    cuda) name=$IMG_CUDA ;;
    trtllm) name=$IMG_TRTLLM ;;
  esac
  [[ -f "$file" ]] || { echo "error: $file is missing" >&2; return 1; }
  ensure_base "$file"
  if [[ "$kind" != trtllm ]]; then
    local default_index
    default_index=$(grep -m1 -E '^ARG TORCH_INDEX_URL=' "$file" | cut -d= -f2-)
    local index="${TORCH_INDEX_URL:-$default_index}"
    if [[ -z "${TORCH_INDEX_URL:-}" ]] && ! reachable "$index"; then
      if [[ "$kind" == cpu ]]; then
        index="$(pip_value index-url)"; index="${index:-https://pypi.org/simple}"
        echo "==> $default_index unreachable: torch from $index (and the machine's wheel dirs)"
      else
        echo "error: $default_index is unreachable, so the CUDA torch wheels cannot be installed;" \
             "fix: build where it is reachable, or set TORCH_INDEX_URL" >&2
        return 1
      fi
    fi
    args+=(--build-arg "TORCH_INDEX_URL=$index")
  fi
  echo "==> building $name ($file) with $BUILDER"
  local start=$SECONDS
  if [[ "$BUILDER" == docker ]]; then
    DOCKER_BUILDKIT=1 docker build -f "$file" -t "$name" "${args[@]}" .
    [[ $PUSH == 1 ]] && docker push "$name"
  else
    python3 "$ROOT/infra/docker/prune-stale.py" "${BUILDAH[@]}"  # leftovers of an interrupted build, first
    "${BUILDAH[@]}" bud --layers --isolation chroot --pull=false -f "$file" -t "$name" "${args[@]}" "${PIP_ARGS[@]}" .
    python3 "$ROOT/infra/docker/prune-stale.py" "${BUILDAH[@]}"  # vfs copies every layer whole: drop stale ones
    [[ $PUSH == 1 ]] && "${BUILDAH[@]}" push "$name" "docker://$name"
  fi
  echo "==> built $name in $(( SECONDS - start )) s"
}

for kind in "${KINDS[@]}"; do build_one "$kind"; done
