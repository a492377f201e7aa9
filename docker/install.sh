#!/bin/sh
# Install onnx-serve into a virtual environment the way the images do, in two steps so that a
# code change does not reinstall the dependencies:
#
#   docker/install.sh requirements VENV FILE   create VENV, install the pinned FILE
#   docker/install.sh app VENV                 build the wheel of the source tree in the current
#                                              directory and install it without dependencies,
#                                              so nothing unpinned slips in
#
# PYTHON picks the interpreter that creates VENV (default python3); pip's own variables
# (PIP_NO_CACHE_DIR, PIP_INDEX_URL, ...) apply as usual.
set -eu

step=$1
venv=$2
pip="$venv/bin/pip"

case "$step" in
requirements)
	"${PYTHON:-python3}" -m venv "$venv"
	"$pip" install --quiet --disable-pip-version-check --requirement "$3"
	;;
app)
	wheels=$(mktemp -d)
	"$pip" wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$wheels" .
	"$pip" install --quiet --disable-pip-version-check --no-deps "$wheels"/onnx_serve-*.whl
	rm -rf "$wheels"
	;;
*)
	echo "usage: $0 requirements VENV FILE | app VENV" >&2
	exit 2
	;;
esac
