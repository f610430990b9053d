#!/bin/sh
# Installs librdkafka's development headers (rdkafka_mock.h) needed to build
# the mock broker. No-op when they are already present.
set -eu
if [ -f /usr/include/librdkafka/rdkafka_mock.h ]; then
  echo "librdkafka-dev already installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y librdkafka-dev
