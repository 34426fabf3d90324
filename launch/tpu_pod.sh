#!/usr/bin/env bash
# Runs launch/main.py on every worker of a TPU VM slice (multi-controller JAX: one process per
# host; jax.distributed.initialize() auto-detects the slice).
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=P] [--create=v5p-64] [--version=RUNTIME] \
#       [--repo=GIT_URL] [--ref=BRANCH] -- --config=configs/llama3_8b_lora_pod.py \
#       --workdir=gs://BUCKET/runs/NAME [--stages=all] [--config.x=y ...]
#
# Without --repo the local checkout is copied to every worker (scp --worker=all). Everything after
# "--" goes to launch.main unchanged; --distributed is added. The workdir is a gs:// URL (the
# package is installed with its gcs extra) or a path every worker sees (a GCS FUSE mount or a
# shared disk). The data stage needs ../shared/data (or config.data.manual_dir) on every worker.
set -euo pipefail

TPU="" ZONE="" PROJECT="" CREATE="" VERSION="v2-alpha-tpuv5" REPO="" REF="main"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --create=*) CREATE="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown argument $1 (launch.main flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$TPU" || -z "$ZONE" ]]; then
  echo "tpu_pod.sh: --tpu=NAME and --zone=ZONE are required" >&2; exit 2
fi
if [[ $# -eq 0 ]]; then
  echo "tpu_pod.sh: give launch.main's flags after --, e.g. -- --config=... --workdir=gs://..." >&2
  exit 2
fi
GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=(--project="$PROJECT")

if [[ -n "$CREATE" ]]; then
  "${GCLOUD[@]}" create "$TPU" "${COMMON[@]}" --accelerator-type="$CREATE" --version="$VERSION"
fi

DEST="rosepo-jax"
if [[ -n "$REPO" ]]; then
  FETCH="rm -rf $DEST && git clone --depth 1 --branch $REF $REPO $DEST"
else
  ROOT="$(cd "$(dirname "$0")/.." && pwd)"
  TARBALL="$(mktemp -d)/rosepo-jax.tar.gz"
  git -C "$ROOT" archive --format=tar.gz -o "$TARBALL" HEAD
  "${GCLOUD[@]}" scp "$TARBALL" "$TPU":rosepo-jax.tar.gz --worker=all "${COMMON[@]}"
  FETCH="rm -rf $DEST && mkdir -p $DEST && tar -xzf rosepo-jax.tar.gz -C $DEST"
fi

printf -v ARGS ' %q' "$@"
"${GCLOUD[@]}" ssh "$TPU" --worker=all "${COMMON[@]}" --command="
  set -e
  $FETCH
  cd $DEST
  python3 -m pip install -q 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  python3 -m pip install -q -e '.[gcs]'
  python3 -m launch.main --distributed $ARGS
"
