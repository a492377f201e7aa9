#!/bin/sh
# Resolve the images' requirements from pyproject.toml into exact versions with hashes, using
# uv (in the dev extras). From the repository root, after changing dependencies:
#
#   docker/lock.sh              keep the current pins where pyproject.toml still allows them
#   docker/lock.sh --upgrade    move every pin to the newest release allowed
#
# The resolution is for the images' interpreter and platform (CPython 3.11 on Linux x86_64,
# glibc 2.36 as in Debian bookworm) whatever machine runs it. The images install with pip's
# hash-checking mode, so a file that differs from what was locked stops the build.
#
# The GPU image takes onnxruntime-gpu with its cuda and cudnn extras (CUDA and cuDNN as pip
# packages); the CPU image the CPU-only onnxruntime of the same version, a quarter of the size.
set -eu
cd "$(dirname "$0")/.."
uv=${UV:-uv}
command -v "$uv" >/dev/null || uv=.venv/bin/uv

compile() {
	output=$1
	shift
	"$uv" pip compile --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
		--generate-hashes --no-strip-extras --custom-compile-command docker/lock.sh \
		--output-file "$output" "$@"
}

compile docker/requirements-gpu.txt pyproject.toml --extra gpu "$@"
version=$(sed -n 's/^onnxruntime-gpu\[[^]]*\]==\([^ ]*\) .*/\1/p' docker/requirements-gpu.txt)
[ -n "$version" ] || { echo "lock.sh: no onnxruntime-gpu pin in docker/requirements-gpu.txt" >&2; exit 1; }

inputs=$(mktemp -d)
trap 'rm -rf "$inputs"' EXIT
echo onnxruntime-gpu > "$inputs/excludes.txt"
echo "onnxruntime==$version" > "$inputs/cpu.in"
compile docker/requirements-cpu.txt pyproject.toml "$inputs/cpu.in" \
	--excludes "$inputs/excludes.txt" "$@"
