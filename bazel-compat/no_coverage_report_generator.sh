#!/bin/sh
# See BUILD.bazel: stands in for Bazel's coverage report generator.
echo "bazel-compat: coverage reports are not supported" >&2
exit 1
