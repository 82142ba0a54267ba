#!/usr/bin/env bash
# System packages the tests and benchmarks use (Debian/Ubuntu, as root): a real RTSP server
# (gst-rtsp-server), a real Prometheus, a real headless browser (Chromium and its driver, for the
# UI tests), real brokers (Mosquitto, Redis), OpenCV's sample videos and Fashion-MNIST.
# Skips what is already there; without root or apt it only says what is missing.
set -euo pipefail
pkgs=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base
      gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-tools prometheus dataset-fashion-mnist
      chromium chromium-driver mosquitto redis-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
need_opencv=0
[ -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] || [ -f "${REMEMBRALL_OPENCV_DATA:-/nonexistent}/vtest.avi" ] || need_opencv=1
if [ ${#missing[@]} -eq 0 ] && [ $need_opencv -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: not root or no apt-get; tests that need these will be skipped: ${missing[*]} ${need_opencv:+opencv-doc}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ $need_opencv -eq 1 ]; then
  # opencv-doc's documentation dependencies are large: unpack only its sample data.
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq opencv-doc && dpkg -x opencv-doc_*.deb root)
  mkdir -p /usr/share/doc/opencv-doc/examples
  cp -r "$tmp/root/usr/share/doc/opencv-doc/examples/data" /usr/share/doc/opencv-doc/examples/
  rm -rf "$tmp"
fi
