#!/usr/bin/env bash
# Before `make test` / `make demo`: the system packages Qt (and, without a display, Xvfb) need.
# Missing ones are installed when we can (root, or passwordless sudo, with apt-get); otherwise this
# stops with one line naming them and the command that installs them. Exit 0 = ready, 1 = missing.
# MULTIRATER_SYSTEM_INSTALL=0 never installs (only reports).
set -u

QT_PKGS="libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0 libxcb-randr0 \
libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxkbcommon-x11-0 libgl1 libegl1 libgl1-mesa-dri libfontconfig1 libdbus-1-3"

missing=""
headless=1
if [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; then headless=0; fi
if [ "$headless" = 1 ] && ! command -v xvfb-run >/dev/null 2>&1; then
  missing="xvfb xauth"
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  if [ -n "$missing" ]; then  # not Debian/Ubuntu: we cannot name the library packages
    echo "error: no display and no xvfb-run: install Xvfb (package xvfb or xorg-x11-server-Xvfb) and the Qt xcb libraries, or run with a DISPLAY" >&2
    exit 1
  fi
  exit 0
fi
for p in $QT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
missing="$(echo $missing)"  # trim
[ -z "$missing" ] && exit 0

sudo=""
can_install=0
if [ "${MULTIRATER_SYSTEM_INSTALL:-1}" != 0 ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then can_install=1
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then can_install=1; sudo="sudo"
  fi
fi
if [ "$can_install" = 1 ]; then
  echo "installing system packages Qt needs: $missing"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing && exit 0
  echo "error: could not install $missing (see above)" >&2
  exit 1
fi
echo "error: missing system packages for the Qt viewer/tests: $missing; install them with: sudo apt-get install -y $missing" >&2
exit 1
