#!/usr/bin/env bash
# Prepares the filesystem of a stand-in for the `nginx` image (used by `make test-deps`):
# Debian's nginx binary from its .deb (downloaded with `apt-get download`, never
# installed, so no nginx service starts on this machine), the shared libraries it links,
# a minimal nginx.conf that serves /usr/share/nginx/html on port 80 and logs to stdout,
# and the users it runs as. The node tests push it to a local registry as
# docker.io/library/nginx:1.25 through a registry mirror, so the course's nginx Deployment
# runs unmodified without Docker Hub.
# Usage: scripts/nginx-rootfs.sh DIR   (does nothing if DIR/usr/sbin/nginx exists)
set -euo pipefail
dir=${1:?target directory}
[ -x "$dir/usr/sbin/nginx" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "preparing the nginx test image filesystem in $dir"
(cd "$work" && apt-get download -qq nginx >/dev/null 2>&1) || {
  apt-get update -qq && (cd "$work" && apt-get download -qq nginx >/dev/null)
}
dpkg-deb -x "$work"/nginx_*.deb "$work/deb"
root="$work/rootfs"
mkdir -p "$root"/{usr/sbin,etc/nginx,usr/share/nginx/html,var/log/nginx,var/lib/nginx,tmp,run}
chmod 1777 "$root/tmp"
cp "$work/deb/usr/sbin/nginx" "$root/usr/sbin/nginx"
libs=$(ldd "$work/deb/usr/sbin/nginx")
if grep -q "not found" <<<"$libs"; then
  echo "nginx needs libraries this machine lacks:" >&2
  grep "not found" <<<"$libs" >&2
  exit 1
fi
for lib in $(awk '/=>/ {print $3} /^[[:space:]]*\/[^ ]*ld-linux/ {print $1}' <<<"$libs"); do
  cp -L --parents "$lib" "$root/"
done
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
cat >"$root/etc/nginx/nginx.conf" <<'CONF'
user nobody nogroup;
worker_processes 1;
error_log stderr notice;
pid /run/nginx.pid;
events { worker_connections 256; }
http {
  access_log /dev/stdout;
  default_type text/html;
  server {
    listen 80;
    root /usr/share/nginx/html;
    index index.html;
  }
}
CONF
cat >"$root/usr/share/nginx/html/index.html" <<'HTML'
<!DOCTYPE html>
<html><head><title>Welcome to nginx!</title></head>
<body><h1>Welcome to nginx!</h1><p>Debian's nginx in a Skiff test image.</p></body></html>
HTML
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
mv "$root" "$dir"
