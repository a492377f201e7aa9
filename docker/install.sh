#!/bin/sh
# Install onnx-serve into a virtual environment the way the images do, in steps so that a code
# change does not reinstall the dependencies:
#
#   docker/install.sh requirements VENV FILE   create VENV, install FILE (exact versions with
#                                              hashes: pip checks every download against them)
#   docker/install.sh app VENV [STAGE]         build the wheel of the source tree in the current
#                                              directory and install it without dependencies,
#                                              so nothing unpinned slips in; then copy the files
#                                              it installed under STAGE, at their own paths
#   docker/install.sh prune VENV               remove what only installing needs: pip and
#                                              setuptools, and from NVIDIA's packages the files
#                                              nothing loads at run time
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
	# Hash-checking mode also refuses a dependency that FILE does not pin.
	"$pip" install --quiet --disable-pip-version-check --require-hashes --requirement "$3"
	;;
app)
	wheels=$(mktemp -d)
	"$pip" wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$wheels" .
	"$pip" install --quiet --disable-pip-version-check --no-deps "$wheels"/onnx_serve-*.whl
	rm -rf "$wheels"
	if [ -n "${3:-}" ]; then
		# -I: the source tree's own metadata (in the current directory) must not be found.
		"$venv/bin/python" -I - "$3" <<-'EOF'
			import os, shutil, sys
			from importlib.metadata import distribution
			stage = sys.argv[1]
			for file in distribution("onnx-serve").files or []:
			    path = os.path.normpath(file.locate())
			    assert os.path.isabs(path), path
			    os.makedirs(os.path.dirname(stage + path), exist_ok=True)
			    shutil.copy2(path, stage + path)
		EOF
	fi
	;;
prune)
	site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
	"$pip" uninstall --quiet --yes pip setuptools
	# CUDA's and cuDNN's wheels also carry what only compiling against them needs (headers,
	# static archives) and two libraries that neither onnxruntime nor the libraries it loads
	# ever open: cuFFTW (FFTW's API over cuFFT) and NVBLAS (a BLAS drop-in over cuBLAS).
	rm -rf "$site"/nvidia/*/include
	rm -f "$site"/nvidia/*/lib/*.a "$site"/nvidia/*/lib/libcufftw.so.* \
		"$site"/nvidia/*/lib/libnvblas.so.*
	;;
*)
	echo "usage: $0 requirements VENV FILE | app VENV [STAGE] | prune VENV" >&2
	exit 2
	;;
esac
