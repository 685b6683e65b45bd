#!/bin/sh
# The images' virtualenv, built the same way by the Dockerfile and by tests/deploy.
#
#   docker/build-venv.sh deps ROLE DEST     a venv at DEST with the wheels of docker/ROLE.lock.txt
#                                           (ROLE: operator or sidecar) and the pinned build backend
#   docker/build-venv.sh project ROLE DEST  this checkout into it, then the build backend and pip removed
#
# Run from the checkout's root. Every wheel is pinned and hash-checked (--require-hashes); the
# project is built with the pinned setuptools (--no-build-isolation: nothing fetched unpinned).
# $PYTHON names the interpreter (default: python).
set -eu
step=$1 role=$2 dest=$3
case "$role" in operator|sidecar) ;; *) echo "unknown role: $role" >&2; exit 2 ;; esac
pip="$dest/bin/python -m pip"
case "$step" in
deps)
    "${PYTHON:-python}" -m venv "$dest"
    $pip install --require-hashes --only-binary=:all: -r docker/build.lock.txt
    $pip install --require-hashes --only-binary=:all: -r "docker/$role.lock.txt"
    ;;
project)
    $pip install --no-deps --no-build-isolation --no-index .
    $pip uninstall --yes setuptools pip
    ;;
*)
    echo "unknown step: $step" >&2; exit 2 ;;
esac
