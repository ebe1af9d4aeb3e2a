# shellcheck shell=bash
# The operator's container image without a container engine: the root filesystem (the binary,
# the shared objects `ldd` says it links, the CA bundle, /etc/passwd and /etc/group naming the
# non-root user), one deterministic layer, and an OCI image layout with the same config as the
# Containerfile. Never runs a container engine and never pushes. Sourced by scripts/image and by
# scripts/test, after scripts/lib/services.sh (uses log, die, can_apt, apt_install); the
# Containerfile's build stage assembles its root filesystem with the same function.

# The image config. The Containerfile says the same thing in its own syntax, and tests/image.rs
# compares the two: change both together.
IMAGE_UID=65532
IMAGE_USER=nonroot
IMAGE_ENTRYPOINT=crabglamp-operator
IMAGE_BIN_DIR=/usr/local/bin
IMAGE_PATH=/usr/local/bin:/usr/bin:/bin
# The chart's metrics.port: /metrics, /healthz and /readyz.
IMAGE_METRICS_PORT=8080
IMAGE_TITLE=crabglamp-operator
IMAGE_DESCRIPTION="Kubernetes operator turning Agent, PlainVM and VirtualKey resources into Hetzner servers, Cloudflare tunnels and LLM-proxy keys"
IMAGE_SOURCE=https://github.com/crabglamp/crabglamp-operator
IMAGE_LICENSES=Apache-2.0
# Debian's bundle (package ca-certificates); the operator's TLS clients read it at this path.
IMAGE_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# What building a layout needs on this machine: GNU tar (--sort), gzip, ldd, the CA bundle, and
# umoci (Debian's package, an independent implementation of the OCI image spec) to check and
# unpack what was built. Installs what is missing with apt when root; otherwise says what to
# install.
ensure_image_tools() {
  local missing=()
  tar --version 2>/dev/null | grep -q 'GNU tar' || missing+=(tar)
  command -v gzip >/dev/null 2>&1 || missing+=(gzip)
  command -v ldd >/dev/null 2>&1 || missing+=(libc-bin)
  [ -f "$IMAGE_CA_BUNDLE" ] || missing+=(ca-certificates)
  command -v umoci >/dev/null 2>&1 || missing+=(umoci)
  if ((${#missing[@]})); then
    can_apt || die "the image build needs: ${missing[*]} (Debian: sudo apt-get install ${missing[*]})"
    apt_install --no-install-recommends "${missing[@]}"
  fi
  command -v umoci >/dev/null 2>&1 || die "umoci was installed but is not on PATH"
  [ -f "$IMAGE_CA_BUNDLE" ] || die "no CA bundle at $IMAGE_CA_BUNDLE after installing ca-certificates"
}

# The shared objects a dynamic binary loads, as absolute paths (the program interpreter
# included); nothing for a static binary. Fails on a library ldd cannot find.
image_linked_objects() {
  local binary=$1 out line path
  if ! out=$(LC_ALL=C ldd "$binary" 2>&1); then
    case $out in
      *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
      *) die "ldd $binary failed: $out" ;;
    esac
  fi
  while IFS= read -r line; do
    line=${line#"${line%%[![:space:]]*}"}
    case $line in
      *"not found"*) die "ldd: $line" ;;
      *"=> /"*) path=${line#*=> } ;;
      /*) path=$line ;;
      *) continue ;; # linux-vdso.so.1: the kernel's, never a file
    esac
    printf '%s\n' "${path%% (*}"
  done <<<"$out"
}

# Assembles the image's root filesystem in DIR (created; must not exist): only the binary, what
# it links, the CA bundle and the non-root user's passwd and group entries. Modes are set
# explicitly (never the umask's), everything belongs to root, so the non-root user can write
# nothing but /tmp, where the chart mounts an emptyDir under a read-only root filesystem.
image_rootfs() {
  local binary=$1 root=$2 object objects
  [ -x "$binary" ] || die "no executable binary at $binary"
  [ ! -e "$root" ] || die "$root already exists"
  [ -f "$IMAGE_CA_BUNDLE" ] || die "no CA bundle at $IMAGE_CA_BUNDLE (Debian: apt-get install ca-certificates)"
  (
    umask 022
    install -d -m 0755 "$root" "$root/etc" "$root/etc/ssl" "$root/etc/ssl/certs" "$root/usr" \
      "$root/usr/local" "$root$IMAGE_BIN_DIR"
    install -d -m 1777 "$root/tmp"
    install -m 0755 "$binary" "$root$IMAGE_BIN_DIR/$IMAGE_ENTRYPOINT"
    # Each object at the path the binary asks for (the interpreter is an absolute path in the
    # ELF header; the loader's default directories hold the rest), with the content behind
    # any symlink: the image has no ld.so.cache and needs none.
    objects=$(image_linked_objects "$binary") || exit 1
    while IFS= read -r object; do
      [ -n "$object" ] || continue
      install -D -m 0755 "$(readlink -f "$object")" "$root$object" || exit 1
    done <<<"$objects"
    install -m 0644 "$IMAGE_CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:%s:/nonexistent:/sbin/nologin\n' \
      "$IMAGE_USER" "$IMAGE_UID" "$IMAGE_UID" "$IMAGE_USER" >"$root/etc/passwd"
    printf 'root:x:0:\n%s:x:%s:\n' "$IMAGE_USER" "$IMAGE_UID" >"$root/etc/group"
    # glibc's built-in defaults differ between versions; say it (files, then DNS).
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
    chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
    find "$root" -mindepth 1 -type d ! -path "$root/tmp" -exec chmod 0755 {} +
  ) || die "cannot assemble the root filesystem in $root"
}

# The OCI architecture of an ELF binary, from its header (e_machine), not from this machine.
image_arch() {
  local machine
  machine=$(od -An -tu2 -j18 -N2 "$1" | tr -d ' ')
  case $machine in
    62) echo amd64 ;;
    183) echo arm64 ;;
    *) die "$1: unsupported ELF machine $machine" ;;
  esac
}

# Stores stdin as a blob of LAYOUT; prints "sha256:<hex> <size>".
image_blob() {
  local layout=$1 tmp hex size
  tmp=$(mktemp "$layout/blobs/.blob.XXXXXX")
  cat >"$tmp"
  hex=$(sha256sum "$tmp" | cut -d' ' -f1)
  size=$(stat -c %s "$tmp")
  chmod 0644 "$tmp"
  mv "$tmp" "$layout/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

# Writes an OCI image layout of ROOT to LAYOUT (created; must not exist) with one layer, the
# manifest tagged TAG in index.json, and prints the manifest's digest. Deterministic: the tar
# lists entries in byte order with owner 0:0 and every mtime at EPOCH (SOURCE_DATE_EPOCH), gzip
# stores no name and no time, the JSON is written byte for byte below, and `created` is EPOCH:
# the same root filesystem and EPOCH give the same digest on any machine with the same tar and
# gzip.
image_layout() {
  local root=$1 layout=$2 tag=$3 epoch=$4 arch=$5 version=$6
  local created diff_id layer layer_digest layer_size config config_digest config_size manifest manifest_digest manifest_size value
  [ ! -e "$layout" ] || die "$layout already exists"
  [[ $epoch =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be seconds since 1970, got '$epoch'"
  for value in "$tag" "$version"; do
    [[ $value =~ ^[A-Za-z0-9_.+-]+$ ]] || die "unexpected characters in '$value'"
  done
  created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
  mkdir -p "$layout/blobs/sha256"
  local entries=()
  mapfile -t entries < <(find "$root" -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort)
  # The uncompressed tar's digest is the layer's diff_id; the gzip's, its digest.
  diff_id=$(cd "$root" && LC_ALL=C tar --create --file=- --format=gnu --sort=name --numeric-owner \
    --owner=0 --group=0 --mtime="@$epoch" -- "${entries[@]}" | tee "$layout/blobs/.layer.tar" | sha256sum | cut -d' ' -f1) \
    || die "tar of $root failed"
  layer=$(gzip -n -6 -c "$layout/blobs/.layer.tar" | image_blob "$layout") || die "gzip failed"
  rm -f "$layout/blobs/.layer.tar"
  read -r layer_digest layer_size <<<"$layer"

  local labels
  labels=$(printf '"org.opencontainers.image.description":"%s","org.opencontainers.image.licenses":"%s","org.opencontainers.image.source":"%s","org.opencontainers.image.title":"%s","org.opencontainers.image.version":"%s"' \
    "$IMAGE_DESCRIPTION" "$IMAGE_LICENSES" "$IMAGE_SOURCE" "$IMAGE_TITLE" "$version")
  config=$(printf '{"created":"%s","architecture":"%s","os":"linux","config":{"User":"%s:%s","ExposedPorts":{"%s/tcp":{}},"Env":["PATH=%s"],"Entrypoint":["%s"],"WorkingDir":"/","Labels":{%s}},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"scripts/image"}]}' \
    "$created" "$arch" "$IMAGE_UID" "$IMAGE_UID" "$IMAGE_METRICS_PORT" "$IMAGE_PATH" "$IMAGE_ENTRYPOINT" "$labels" "$diff_id" "$created" | image_blob "$layout")
  read -r config_digest config_size <<<"$config"

  manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" | image_blob "$layout")
  read -r manifest_digest manifest_size <<<"$manifest"

  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"},"platform":{"architecture":"%s","os":"linux"}}]}' \
    "$manifest_digest" "$manifest_size" "$tag" "$arch" >"$layout/index.json"
  chmod 0644 "$layout/oci-layout" "$layout/index.json"
  echo "$manifest_digest"
}

# The independent check: umoci reads LAYOUT:TAG, verifies every blob against its digest and the
# layer against its diff_id, and unpacks it into BUNDLE (an OCI runtime bundle: rootfs/ and the
# config.json a runtime would start from); the binary it unpacked must be BINARY, byte for byte.
image_check() {
  local layout=$1 tag=$2 bundle=$3 binary=$4 rootless=()
  is_root || rootless=(--rootless)
  # The layer has no entry for / itself: its mode is the unpacker's choice, 0755 in container
  # runtimes, so umoci gets a umask that gives that whatever the caller's.
  (umask 022 && umoci unpack "${rootless[@]}" --image "$layout:$tag" "$bundle" >/dev/null) \
    || die "umoci could not unpack $layout:$tag"
  cmp -s "$bundle/rootfs$IMAGE_BIN_DIR/$IMAGE_ENTRYPOINT" "$binary" \
    || die "the binary umoci unpacked from $layout differs from $binary"
}
