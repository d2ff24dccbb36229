#!/bin/sh
# Builds a small OCI image from the host's static busybox (Debian's busybox-static):
# one uncompressed layer with /bin/busybox, its applet links, /etc/passwd and a web root.
# Usage: scripts/busybox-image.sh OUT.tar [NAME]   (NAME defaults to skiff.local/busybox:latest)
# Import it with `skiff image import OUT.tar` or `skiff agent --image-archive OUT.tar`.
set -eu
out=$1
name=${2:-skiff.local/busybox:latest}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "no static busybox at $busybox (apt-get install busybox-static)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/www" "$root/var/www"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
echo 'hello from skiff' > "$root/www/index.html"
chmod 1777 "$root/tmp"
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=2020-01-01 -C "$root" -cf "$work/layer.tar" .
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
layer=$(sha "$work/layer.tar")
mkdir -p "$work/oci/blobs/sha256"
mv "$work/layer.tar" "$work/oci/blobs/sha256/$layer"
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]}}
JSON
config=$(sha "$work/config.json")
mv "$work/config.json" "$work/oci/blobs/sha256/$config"
cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$(size "$work/oci/blobs/sha256/$config")},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer","size":$(size "$work/oci/blobs/sha256/$layer")}]}
JSON
manifest=$(sha "$work/manifest.json")
msize=$(size "$work/manifest.json")
mv "$work/manifest.json" "$work/oci/blobs/sha256/$manifest"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
cat > "$work/oci/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$msize,"annotations":{"io.containerd.image.name":"$name"}}]}
JSON
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=2020-01-01 -C "$work/oci" -cf "$out" .
echo "$out: $name"
