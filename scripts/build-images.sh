#!/usr/bin/env bash
# build-images.sh — make a small, real kernel + rootfs pair from Debian
# packages, put them under FC_IMAGES_DIR and register them with Nexus.
#
#   kernel  vmlinux-<kver>                  uncompressed ELF, extracted from the
#                                           distribution kernel's bzImage
#   rootfs  rootfs-busybox-<ver>.ext4       busybox (static) on ext4, built with
#                                           mkfs.ext4 -d, no loop mount needed
#
# Run it as root (it installs missing packages with apt-get and writes under
# FC_IMAGES_DIR). It is idempotent: files that exist are kept (registered
# images are immutable, so they are never rebuilt in place), images already
# registered are left alone. With NEXUS_ADDR and NEXUS_TOKEN set it registers
# both with `nexus image add`.
#
# Environment:
#   FC_IMAGES_DIR    where the images go (default $FC_RUN_DIR/images, FC_RUN_DIR
#                    default /srv/fc; for `nexus up`: .nexus/run/images)
#   ROOTFS_MIB       rootfs size in MiB (default 64)
#   KERNEL_PACKAGE   kernel package (default: what linux-image-amd64 depends on)
#   IMAGE_PROJECT    project to register in (default "*": shared, needs an admin
#                    token; empty: the token's own project)
#   NEXUS_BIN        the nexus CLI (default: nexus on PATH, else ./bin/nexus)
#   NEXUS_ADDR, NEXUS_TOKEN   register the images there when both are set
set -euo pipefail

say() { printf '==> %s\n' "$*"; }
die() { printf 'build-images: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and writes under FC_IMAGES_DIR): sudo $0"
command -v apt-get >/dev/null || die "needs a Debian or Ubuntu host (apt-get)"

IMAGES_DIR=${FC_IMAGES_DIR:-${FC_RUN_DIR:-/srv/fc}/images}
ROOTFS_MIB=${ROOTFS_MIB:-64}
IMAGE_PROJECT=${IMAGE_PROJECT-*}
[[ $ROOTFS_MIB =~ ^[0-9]+$ ]] && [ "$ROOTFS_MIB" -ge 8 ] || die "ROOTFS_MIB must be a number of MiB, at least 8"

# ensure_packages installs the packages that are not installed yet.
apt_updated=
ensure_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	say "installing ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; then
		[ -n "$apt_updated" ] && die "apt-get install ${missing[*]} failed"
		apt_updated=1
		apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	fi
}

ensure_packages busybox-static e2fsprogs coreutils
mkdir -p "$IMAGES_DIR"
IMAGES_DIR=$(cd "$IMAGES_DIR" && pwd -P)
work=$(mktemp -d /tmp/nexus-images.XXXXXX)
trap 'rm -rf "$work"' EXIT
say "images dir: $IMAGES_DIR"

# ---------------------------------------------------------------- kernel

# le32 FILE OFFSET prints the little-endian 32-bit integer at OFFSET.
le32() { od -An -t u4 --endian=little -j "$2" -N 4 "$1" | tr -d ' '; }
le16() { od -An -t u2 --endian=little -j "$2" -N 2 "$1" | tr -d ' '; }
u8() { od -An -t u1 -j "$2" -N 1 "$1" | tr -d ' '; }
hexbytes() { od -An -t x1 -j "$2" -N "$3" "$1" | tr -d ' \n'; }

# extract_vmlinux BZIMAGE OUT writes the ELF kernel inside an x86 bzImage.
# The boot protocol header (2.08+) says where the compressed payload lies:
# payload_offset (0x248) from the start of the protected-mode code, which
# follows the (setup_sects + 1) 512-byte sectors of setup; payload_length
# (0x24c) its size. Its first bytes say how it is compressed; every format
# but gzip carries the uncompressed size as 4 trailing bytes, which are cut
# off before decompressing and then checked against the result.
extract_vmlinux() {
	local img=$1 out=$2
	[ "$(hexbytes "$img" $((0x202)) 4)" = 48647253 ] || die "$img is not a bzImage (no HdrS header)"
	local version setup offset length start magic
	version=$(le16 "$img" $((0x206)))
	[ "$version" -ge $((0x208)) ] || die "$img: boot protocol $(printf %x "$version") is older than 2.08 (no payload fields)"
	setup=$(u8 "$img" $((0x1f1)))
	[ "$setup" -eq 0 ] && setup=4
	offset=$(le32 "$img" $((0x248)))
	length=$(le32 "$img" $((0x24c)))
	start=$(((setup + 1) * 512 + offset))
	say "bzImage: protocol $(printf %x "$version"), payload of $length bytes at offset $start"
	dd if="$img" of="$work/payload" bs=64K iflag=skip_bytes,count_bytes skip="$start" count="$length" status=none
	[ "$(stat -c %s "$work/payload")" -eq "$length" ] || die "$img: payload runs past the end of the file"
	magic=$(hexbytes "$work/payload" 0 6)
	local tool=() pkg=
	case $magic in
	1f8b*) tool=(gzip -dc) ;;
	fd377a585a00) tool=(xz -dc) pkg=xz-utils ;;
	28b52ffd*) tool=(zstd -dcq) pkg=zstd ;;
	425a68*) tool=(bzip2 -dc) pkg=bzip2 ;;
	02214c18*) tool=(lz4 -dc) pkg=lz4 ;;
	894c5a4f*) tool=(lzop -dc) pkg=lzop ;;
	5d0000*) tool=(xz --format=lzma -dc) pkg=xz-utils ;;
	*) die "$img: unknown payload compression (magic $magic)" ;;
	esac
	[ -n "$pkg" ] && ensure_packages "$pkg"
	say "payload is ${tool[0]}-compressed"
	local want=
	if [ "${tool[0]}" != gzip ]; then
		want=$(le32 "$work/payload" $((length - 4)))
		head -c $((length - 4)) "$work/payload" >"$work/payload.z"
	else
		mv "$work/payload" "$work/payload.z"
	fi
	"${tool[@]}" <"$work/payload.z" >"$out" || die "$img: decompressing the payload failed"
	[ -z "$want" ] || [ "$(stat -c %s "$out")" -eq "$want" ] ||
		die "$img: decompressed $(stat -c %s "$out") bytes, the bzImage says $want"
	[ "$(hexbytes "$out" 0 4)" = 7f454c46 ] || die "$img: the payload is not an ELF kernel"
}

kpkg=${KERNEL_PACKAGE:-$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')}
if [ -z "$kpkg" ]; then
	apt-get update -q && apt_updated=1
	kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$kpkg" ] || die "cannot tell which kernel package linux-image-amd64 stands for; set KERNEL_PACKAGE"
kver=${kpkg#linux-image-}
kver=${kver%-unsigned}
kernel_name=vmlinux-$kver
kernel=$IMAGES_DIR/$kernel_name
if [ -e "$kernel" ]; then
	say "kernel $kernel exists: keeping it"
else
	say "downloading $kpkg"
	(cd "$work" && apt-get download -q "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
	deb=$(ls "$work"/*.deb 2>/dev/null | head -n 1)
	[ -n "$deb" ] || die "apt-get download $kpkg gave no .deb"
	dpkg-deb -x "$deb" "$work/kernel"
	bz=$(ls "$work"/kernel/boot/vmlinuz-* | head -n 1)
	[ -f "$bz" ] || die "$deb has no /boot/vmlinuz-*"
	say "extracting the ELF kernel from $(basename "$bz")"
	extract_vmlinux "$bz" "$work/vmlinux"
	# Firecracker finds its devices through virtio-mmio and boots without an
	# initramfs: say when the distribution builds what that needs as modules.
	if cfg=$(ls "$work"/kernel/boot/config-* 2>/dev/null | head -n 1) && [ -n "$cfg" ]; then
		mods=$(grep -E '^CONFIG_(VIRTIO_MMIO|VIRTIO_BLK|EXT4_FS)=m' "$cfg" | cut -d= -f1 | tr '\n' ' ' || true)
		[ -z "$mods" ] || say "note: $kpkg builds ${mods}as modules: it boots under firecracker-sim as is, real firecracker needs an initramfs with them (or a kernel built with them =y)"
	fi
	install -m 0444 "$work/vmlinux" "$kernel.partial"
	mv "$kernel.partial" "$kernel"
	say "kernel: $kernel ($(stat -c %s "$kernel") bytes)"
fi

# ---------------------------------------------------------------- rootfs

bbver=$(dpkg-query -W -f='${Version}' busybox-static)
bbver=${bbver#*:}  # no epoch
bbver=${bbver%%-*} # no Debian revision
rootfs_name=busybox-$bbver
rootfs=$IMAGES_DIR/rootfs-$rootfs_name.ext4
if [ -e "$rootfs" ]; then
	say "rootfs $rootfs exists: keeping it"
else
	say "building a ${ROOTFS_MIB} MiB busybox $bbver rootfs"
	root=$work/root
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,dev,proc,sys,tmp,root,run,var/log}
	chmod 1777 "$root/tmp"
	install -m 0755 /bin/busybox "$root/bin/busybox"
	/bin/busybox --list-full | while read -r applet; do
		[ "$applet" = bin/busybox ] || [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
	done
	cat >"$root/etc/inittab" <<-'EOF'
		::sysinit:/etc/init.d/rcS
		::respawn:-/bin/sh
		::ctrlaltdel:/sbin/reboot
		::shutdown:/bin/umount -a -r
	EOF
	cat >"$root/etc/init.d/rcS" <<-'EOF'
		#!/bin/sh
		mount -t proc proc /proc
		mount -t sysfs sysfs /sys
		mount -t devtmpfs devtmpfs /dev 2>/dev/null
		mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
		hostname -F /etc/hostname
		ip link set lo up
		ip link set eth0 up 2>/dev/null
		echo "nexus busybox rootfs: up"
	EOF
	chmod 0755 "$root/etc/init.d/rcS"
	echo nexus-vm >"$root/etc/hostname"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
	echo 'root:x:0:' >"$root/etc/group"
	printf 'NAME="Nexus busybox"\nVERSION_ID=%s\n' "$bbver" >"$root/etc/os-release"
	# Same inputs, same image: fixed times, UUID and hash seed.
	epoch=${SOURCE_DATE_EPOCH:-1700000000}
	find "$root" -exec touch -h -d "@$epoch" {} +
	h=$(printf '%s' "$rootfs_name" | md5sum)
	uuid=${h:0:8}-${h:8:4}-4${h:13:3}-8${h:17:3}-${h:20:12}
	truncate -s "${ROOTFS_MIB}M" "$work/rootfs.ext4"
	E2FSPROGS_FAKE_TIME=$epoch mkfs.ext4 -q -F -L rootfs -m 0 -U "$uuid" -E "hash_seed=$uuid,root_owner=0:0" \
		-d "$root" "$work/rootfs.ext4"
	# mkfs.ext4 -d copies each file's ctime, which cannot be set on the
	# staging files: pin it, so every host builds the identical image (a
	# fleet's hosts must hold the same file for one registration).
	{
		echo "sif / ctime @$epoch"
		echo "sif /lost+found ctime @$epoch"
		(cd "$root" && find . -mindepth 1 -printf 'sif /%P ctime @'"$epoch"'\n')
	} >"$work/ctimes"
	E2FSPROGS_FAKE_TIME=$epoch debugfs -w -f "$work/ctimes" "$work/rootfs.ext4" >/dev/null 2>"$work/debugfs.err" ||
		die "debugfs: $(cat "$work/debugfs.err")"
	dumpe2fs -h "$work/rootfs.ext4" 2>/dev/null | grep -q 'Filesystem magic number:  0xEF53' || die "mkfs.ext4 did not make an ext4 image"
	e2fsck -fn "$work/rootfs.ext4" >/dev/null 2>&1 || die "the new rootfs does not pass e2fsck -fn"
	install -m 0444 "$work/rootfs.ext4" "$rootfs.partial"
	mv "$rootfs.partial" "$rootfs"
	say "rootfs: $rootfs ($(du -k "$rootfs" | cut -f1) KiB on disk of ${ROOTFS_MIB} MiB)"
fi

# ---------------------------------------------------------------- register

if [ -z "${NEXUS_ADDR:-}" ] || [ -z "${NEXUS_TOKEN:-}" ]; then
	say "NEXUS_ADDR/NEXUS_TOKEN not set: not registering. To register later:"
	echo "  nexus image add --kind kernel --name $kernel_name --path $kernel --project '$IMAGE_PROJECT'"
	echo "  nexus image add --kind rootfs --name $rootfs_name --path $rootfs --project '$IMAGE_PROJECT'"
	exit 0
fi
nexus=${NEXUS_BIN:-$(command -v nexus || echo ./bin/nexus)}
[ -x "$nexus" ] || die "no nexus CLI at $nexus (make build, or set NEXUS_BIN)"
proj=()
[ -n "$IMAGE_PROJECT" ] && proj=(--project "$IMAGE_PROJECT")

register() {
	local kind=$1 name=$2 file=$3 sum existing
	sum=$(sha256sum "$file" | cut -d' ' -f1)
	if existing=$("$nexus" image get "$name" "${proj[@]}" -o json 2>/dev/null); then
		if grep -q "\"sha256\": \"$sum\"" <<<"$existing"; then
			say "$kind $name is registered already"
		else
			say "WARNING: an image named $name is registered with another checksum; left as it is"
		fi
		return 0
	fi
	say "registering $kind $name"
	"$nexus" image add --kind "$kind" --name "$name" --path "$file" --sha256 "$sum" "${proj[@]}"
}
register kernel "$kernel_name" "$kernel"
register rootfs "$rootfs_name" "$rootfs"
say "done. A template from the two:"
echo "  nexus template create --name busybox --kernel-image $kernel_name --rootfs-image $rootfs_name"
echo "  nexus vm create --name demo --template busybox"
