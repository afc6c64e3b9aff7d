#!/usr/bin/env bash
# build-images.sh — make a small set of guest images that really boot, from
# Debian packages, put them under FC_IMAGES_DIR and register them with Nexus.
#
#   kernel  vmlinux-<kver>                      uncompressed ELF, extracted from
#                                               the distribution kernel's bzImage
#   initrd  initrd-<kver>-<recipe>.cpio.gz      newc cpio, gzip: the kernel's
#                                               virtio-mmio, virtio-blk/net, ext4
#                                               and vsock modules and an init that
#                                               loads them, mounts root= and
#                                               switch_roots to it
#   rootfs  rootfs-busybox-<ver>-<recipe>.ext4  busybox (static) on ext4, built
#                                               with mkfs.ext4 -d (no loop mount);
#                                               its init configures eth0 from ip=,
#                                               answers on TCP 8080 and prints
#                                               "nexus-guest: ready"
#
# <recipe> is a short hash of what goes into the file (the package versions
# and the init scripts below), so a changed recipe makes a new file with a
# new name instead of a stale file kept under the old one. docs/images.md
# is the contract the images keep (boot arguments, console lines).
#
# Run it as root (it installs missing packages with apt-get and writes under
# FC_IMAGES_DIR). It is idempotent: files that exist are kept (registered
# images are immutable, so they are never rebuilt in place), images already
# registered are left alone, and the kernel package is downloaded once into
# IMAGES_CACHE. With NEXUS_ADDR and NEXUS_TOKEN set it registers all three
# with `nexus image add`.
#
# Environment:
#   FC_IMAGES_DIR    where the images go (default $FC_RUN_DIR/images, FC_RUN_DIR
#                    default /srv/fc; for `nexus up`: .nexus/run/images)
#   IMAGES_CACHE     download cache (default /var/cache/nexus/images)
#   IMAGES_MANIFEST  if set, write KEY=value lines naming the three files there
#                    (KERNEL, INITRD, ROOTFS and *_NAME), for scripts and tests
#   ROOTFS_MIB       rootfs size in MiB (default 64)
#   KERNEL_PACKAGE   kernel package (default: what linux-image-amd64 depends on;
#                    on Ubuntu linux-image-virtual, with its linux-modules-<kver>)
#   IMAGE_PROJECT    project to register in (default "*": shared, needs an admin
#                    token; empty: the token's own project)
#   NEXUS_BIN        the nexus CLI (default: nexus on PATH, else ./bin/nexus)
#   NEXUS_ADDR, NEXUS_TOKEN   register the images there when both are set
set -euo pipefail

say() { printf '==> %s\n' "$*"; }
warn() { printf '==> WARNING: %s\n' "$*" >&2; }
die() { printf 'build-images: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and writes under FC_IMAGES_DIR): sudo $0"
command -v apt-get >/dev/null || die "needs a Debian or Ubuntu host (apt-get)"

IMAGES_DIR=${FC_IMAGES_DIR:-${FC_RUN_DIR:-/srv/fc}/images}
CACHE=${IMAGES_CACHE:-/var/cache/nexus/images}
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

# busybox for both inits, mkfs.ext4/debugfs for the rootfs, cpio for the
# initrd, depmod (kmod) to resolve module dependencies.
ensure_packages busybox-static e2fsprogs coreutils cpio kmod gzip util-linux
mkdir -p "$IMAGES_DIR" "$CACHE"
IMAGES_DIR=$(cd "$IMAGES_DIR" && pwd -P)
CACHE=$(cd "$CACHE" && pwd -P)
# One build at a time per cache: two runs (CI and a developer, two test
# binaries) would otherwise download and write the same files at once.
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
	say "waiting for another build-images.sh to finish"
	flock 9
fi
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

# ---------------------------------------------------------------- what to build

# kernel_package prints the versioned kernel package the distribution's
# metapackage stands for: linux-image-amd64 on Debian, linux-image-virtual
# or linux-image-generic on Ubuntu.
kernel_package() {
	local meta p
	for meta in linux-image-amd64 linux-image-virtual linux-image-generic; do
		p=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
		[ -z "$p" ] || { echo "$p"; return 0; }
	done
}
kpkg=${KERNEL_PACKAGE:-$(kernel_package)}
if [ -z "$kpkg" ]; then
	apt-get update -q && apt_updated=1
	kpkg=$(kernel_package)
fi
[ -n "$kpkg" ] || die "cannot tell which kernel package linux-image-amd64 (Debian) or linux-image-virtual (Ubuntu) stands for; set KERNEL_PACKAGE"
kver=${kpkg#linux-image-}
kver=${kver%-unsigned}
bbver=$(dpkg-query -W -f='${Version}' busybox-static)
bbver=${bbver#*:}  # no epoch
bbver=${bbver%%-*} # no Debian revision

# The modules the guest needs; their dependencies are resolved from the
# kernel's modules.dep (and modules.softdep). Built-in ones are skipped, so
# a kernel with them =y gets an initrd that only mounts root.
INITRD_MODULES="virtio_mmio virtio_blk virtio_net ext4 vmw_vsock_virtio_transport"

# initrd_init is the initramfs's /init.
initrd_init() {
	cat <<'EOF'
#!/bin/busybox sh
# Nexus initramfs init (scripts/build-images.sh; docs/images.md). The
# distribution kernel builds virtio-mmio, virtio-blk, virtio-net and ext4 as
# modules: load them (/lib/modules/load lists them, dependencies first),
# mount the root drive named by root= read-only or read-write as the command
# line says, and hand PID 1 over to the root's init.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

say() { echo "nexus-initrd: $*"; }
# fail prints the line Nexus watches for and ends PID 1: the kernel panics
# and, with panic=1, reboots, so the VMM exits instead of hanging.
fail() {
	echo "nexus-guest: failed: $*"
	exit 1
}

set -f # the command line is data: no globbing
cmdline=$(cat /proc/cmdline)
root= fstype=ext4 flags= mode=ro init=/sbin/init delay=10
for a in $cmdline; do
	case $a in
	--) break ;;
	root=*) root=${a#root=} ;;
	rootfstype=*) fstype=${a#rootfstype=} ;;
	rootflags=*) flags=${a#rootflags=} ;;
	rootdelay=*) delay=${a#rootdelay=} ;;
	ro) mode=ro ;;
	rw) mode=rw ;;
	init=*) init=${a#init=} ;;
	esac
done
case $delay in '' | *[!0-9]*) delay=10 ;; esac

# params M prints the <M>.<param>=<value> arguments of the command line
# (virtio_mmio.device=… from older firecracker): on a full system modprobe
# passes them to a module it loads, insmod does not.
params() {
	local a k out=
	for a in $cmdline; do
		case $a in
		--) break ;;
		*.*=*)
			k=${a%%.*}
			[ "${k//-/_}" = "$1" ] && out="$out ${a#*.}"
			;;
		esac
	done
	echo "$out"
}
while read -r m file optional; do
	[ -n "$m" ] || continue
	if ! err=$(insmod "/lib/modules/$file" $(params "$m") 2>&1); then
		# An optional module is one of several providers (crc32c_intel
		# needs SSE4.2; crc32c_generic does the same everywhere).
		[ -n "$optional" ] || say "module $m not loaded: $err"
	fi
done </lib/modules/load

[ -n "$root" ] || fail "no root= on the kernel command line (Nexus passes root=/dev/vda for the root drive)"
case $root in
/dev/*) dev=$root ;;
UUID=* | LABEL=*) dev= ;;
*) fail "root=$root: this initramfs understands root=/dev/<name>, UUID=<uuid> and LABEL=<label>" ;;
esac
# Deadlines go by the clock, not by counting sleeps: every command is a
# fork and exec, which can be slow under emulation.
now() {
	read -r now _ </proc/uptime
	now=${now%.*}
}
now
until=$((now + delay))
while :; do
	case $root in UUID=* | LABEL=*) dev=$(findfs "$root" 2>/dev/null) || dev= ;; esac
	[ -n "$dev" ] && [ -b "$dev" ] && break
	now
	[ "$now" -lt "$until" ] ||
		fail "root device $root did not appear within ${delay}s (block devices: $(echo $(ls /sys/class/block)))"
	usleep 100000
done
opts=$mode${flags:+,$flags}
err=$(mount -t "$fstype" -o "$opts" "$dev" /newroot 2>&1) || fail "cannot mount root $root ($fstype, $opts): $err"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || fail "root $root has no $init"
say "root $root mounted ($fstype, $opts), starting $init"
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
umount /sys /proc
exec switch_root /newroot "$init"
EOF
}

# rootfs_rcS is the rootfs's first script (busybox init's sysinit).
rootfs_rcS() {
	cat <<'EOF'
#!/bin/sh
# Nexus guest init (scripts/build-images.sh; docs/images.md is the
# contract). It configures the network from the kernel's ip= parameter
#   ip=<client-ip>::<gateway>:<netmask>::<device>:off[:<dns0>[:<dns1>]]
# (the kernel's own syntax, which it applies only when built with
# CONFIG_IP_PNP and the NIC driver built in), writes resolv.conf, starts the
# probe listener on TCP 8080 and prints "nexus-guest: ready" once. When it
# cannot, it prints "nexus-guest: failed: <why>" instead. Either way busybox
# init then starts a shell on the console and the guest keeps running.
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
# Writable places that work with a read-only root as well:
# /etc/resolv.conf links to /run/resolv.conf.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
hostname -F /etc/hostname
ip link set lo up
: >/run/resolv.conf

fail() {
	echo "nexus-guest: failed: $*"
	exit 1
}
# now sets $now to the seconds since boot: waits go by the clock, not by
# counting sleeps, since every command is a fork (slow under emulation).
now() {
	read -r now _ </proc/uptime
	now=${now%.*}
}
# ipv4 A succeeds when A is a dotted-quad IPv4 address.
ipv4() {
	local IFS=. o
	set -- $1
	[ $# -eq 4 ] || return 1
	for o; do
		case $o in '' | *[!0-9]* | ????*) return 1 ;; esac
		[ "$o" -le 255 ] || return 1
	done
}
# masklen M prints the prefix length of the dotted netmask M.
masklen() {
	local IFS=. o n=0 end=
	set -- $1
	[ $# -eq 4 ] || return 1
	for o; do
		case $o in
		255) [ -z "$end" ] || return 1; n=$((n + 8)) ;;
		0) end=1 ;;
		254 | 252 | 248 | 240 | 224 | 192 | 128)
			[ -z "$end" ] || return 1
			end=1
			case $o in
			254) n=$((n + 7)) ;; 252) n=$((n + 6)) ;; 248) n=$((n + 5)) ;; 240) n=$((n + 4)) ;;
			224) n=$((n + 3)) ;; 192) n=$((n + 2)) ;; 128) n=$((n + 1)) ;;
			esac
			;;
		*) return 1 ;;
		esac
	done
	[ "$n" -ge 1 ] && echo "$n"
}

set -f # the command line is data: no globbing
ipconf=
for a in $(cat /proc/cmdline); do
	case $a in
	--) break ;;
	ip=*) ipconf=${a#ip=} ;;
	esac
done
case $ipconf in
'') echo "nexus-guest: no ip= on the kernel command line: network not configured" ;;
off | none) echo "nexus-guest: ip=$ipconf: network not configured" ;;
on | any | dhcp | dhcp6 | bootp | rarp | both)
	fail "ip=$ipconf: automatic configuration is not supported, only a static address (ip=<client-ip>::<gateway>:<netmask>::eth0:off)"
	;;
*)
	oldifs=$IFS
	IFS=:
	set -- $ipconf
	IFS=$oldifs
	client=$1 gw=$3 mask=$4 host=$5 dev=${6:-eth0} auto=$7 dns0=$8 dns1=$9
	case $auto in '' | off | none) ;; *) fail "ip=$ipconf: autoconfiguration '$auto' is not supported, only a static address (…:off)" ;; esac
	ipv4 "$client" || fail "ip=$ipconf: client address '$client' is not an IPv4 address"
	len=$(masklen "$mask") || fail "ip=$ipconf: netmask '$mask' is not a dotted IPv4 netmask"
	[ -z "$gw" ] || ipv4 "$gw" || fail "ip=$ipconf: gateway '$gw' is not an IPv4 address"
	for d in $dns0 $dns1; do ipv4 "$d" || fail "ip=$ipconf: DNS server '$d' is not an IPv4 address"; done
	now
	until=$((now + 10))
	while [ ! -e "/sys/class/net/$dev" ]; do
		now
		[ "$now" -lt "$until" ] || fail "ip=$ipconf: no interface $dev within 10s (interfaces: $(echo $(ls /sys/class/net)))"
		usleep 100000
	done
	ip link set dev "$dev" up || fail "ip=$ipconf: cannot bring $dev up"
	ip addr replace "$client/$len" dev "$dev" || fail "ip=$ipconf: cannot add $client/$len to $dev"
	[ -z "$gw" ] || ip route replace default via "$gw" dev "$dev" || fail "ip=$ipconf: cannot route through $gw"
	[ -z "$host" ] || hostname "$host"
	for d in $dns0 $dns1; do echo "nameserver $d" >>/run/resolv.conf; done
	echo "nexus-guest: $dev $client/$len${gw:+ via $gw}${dns0:+ dns $dns0}${dns1:+ $dns1}"
	;;
esac

# The probe listener: the host proves it reaches the guest with a TCP
# connection (HTTP GET /) to port 8080. Ready only once it listens.
httpd -p 8080 -h /srv/probe || fail "cannot start the probe listener (httpd on port 8080)"
now
until=$((now + 10))
until grep -q ':1F90 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
	now
	[ "$now" -lt "$until" ] || fail "the probe listener does not listen on port 8080 after 10s"
	usleep 100000
done
echo "nexus-guest: ready"
EOF
}

rootfs_inittab() {
	cat <<'EOF'
::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
EOF
}

# The probe listener's answer (internal/guest.ProbeText).
probe_text() { echo "nexus-guest: hello"; }

initrd_recipe=$( (declare -f initrd_init; echo "$kpkg $bbver $INITRD_MODULES initrd-v1") | sha256sum | cut -c1-8)
rootfs_recipe=$( (declare -f rootfs_rcS rootfs_inittab probe_text; echo "$bbver $ROOTFS_MIB rootfs-v1") | sha256sum | cut -c1-8)

kernel_name=vmlinux-$kver
kernel=$IMAGES_DIR/$kernel_name
initrd_name=initrd-$kver-$initrd_recipe
initrd=$IMAGES_DIR/$initrd_name.cpio.gz
rootfs_name=busybox-$bbver-$rootfs_recipe
rootfs=$IMAGES_DIR/rootfs-$rootfs_name.ext4

# fetch_deb PKG prints the path of PKG's .deb in the cache, downloading it
# first when it is not there. The cache keeps one version per family: a
# download removes the family's other packages (an older ABI).
fetch_deb() {
	local pkg=$1 deb
	deb=$(ls "$CACHE/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
	if [ -n "$deb" ]; then
		say "using the cached $(basename "$deb")" >&2
		echo "$deb"
		return 0
	fi
	say "downloading $pkg into $CACHE" >&2
	rm -rf "$work/dl"
	mkdir -p "$work/dl"
	(cd "$work/dl" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
	deb=$(ls "$work"/dl/*.deb 2>/dev/null | head -n 1)
	[ -n "$deb" ] || die "apt-get download $pkg gave no .deb"
	find "$CACHE" -maxdepth 1 -name "${pkg%%-[0-9]*}-[0-9]*.deb" ! -name "${pkg}_*" -delete
	mv "$deb" "$CACHE/"
	echo "$CACHE/$(basename "$deb")"
}

# kernel_tree unpacks the kernel package into $work/kernel, with the
# package holding its modules where the distribution splits them off
# (Ubuntu's linux-modules-<kver>).
kernel_tree() {
	[ -d "$work/kernel" ] && return 0
	local pkgs=("$kpkg") pkg deb
	if apt-cache show "linux-modules-$kver" >/dev/null 2>&1; then
		pkgs+=("linux-modules-$kver")
	fi
	for pkg in "${pkgs[@]}"; do
		deb=$(fetch_deb "$pkg")
		dpkg-deb -x "$deb" "$work/kernel" || die "cannot unpack $deb (remove it from $CACHE to download it again)"
	done
}

# ---------------------------------------------------------------- kernel

if [ -e "$kernel" ]; then
	say "kernel $kernel exists: keeping it"
else
	kernel_tree
	bz=$(ls "$work"/kernel/boot/vmlinuz-* | head -n 1)
	[ -f "$bz" ] || die "$kpkg has no /boot/vmlinuz-*"
	say "extracting the ELF kernel from $(basename "$bz")"
	extract_vmlinux "$bz" "$work/vmlinux"
	install -m 0444 "$work/vmlinux" "$kernel.partial"
	mv "$kernel.partial" "$kernel"
	say "kernel: $kernel ($(stat -c %s "$kernel") bytes)"
fi

# ---------------------------------------------------------------- initrd

# Same inputs, same image: fixed times (and, below, owners, order and no
# gzip name/time), so every host of a fleet builds the identical file.
epoch=${SOURCE_DATE_EPOCH:-1700000000}

if [ -e "$initrd" ]; then
	say "initrd $initrd exists: keeping it"
else
	kernel_tree
	moddir=$work/kernel/lib/modules/$kver
	[ -d "$moddir" ] || die "$kpkg has no lib/modules/$kver"
	# Debian's package leaves modules.dep to its postinst: make it.
	depmod -b "$work/kernel" "$kver" || die "depmod for $kver failed"
	declare -A modpath=() moddeps=() softpre=() builtin=() seen=()
	# modname PATH sets $n to the module name of PATH (kernel/fs/ext4/ext4.ko.xz
	# → ext4), '-' read as '_' like the kernel does; no subshell, as it runs
	# for every module of the kernel.
	modname() {
		n=${1##*/}
		n=${n%%.ko*}
		n=${n//-/_}
	}
	while IFS=: read -r path deps; do
		modname "$path"
		modpath[$n]=$path
		moddeps[$n]=$deps
	done <"$moddir/modules.dep"
	while read -r _ n rest; do
		pre=${rest#pre:}
		[ "$pre" != "$rest" ] || continue
		softpre[${n//-/_}]=${pre%%post:*}
	done < <(grep '^softdep ' "$moddir/modules.softdep" || true)
	while read -r path; do
		modname "$path"
		builtin[$n]=1
	done <"$moddir/modules.builtin"

	# resolve NAME [optional] appends NAME to the load order after what it
	# needs: modules.dep's hard dependencies (required) and the "pre:" soft
	# dependencies (a module, or an alias with several providers: each is
	# tried, none required, e.g. ext4's crypto-crc32c).
	load=()
	resolve() {
		local self=${1//-/_} opt=${2:-} n d s p
		[ -z "${seen[$self]:-}" ] || return 0
		seen[$self]=1
		if [ -z "${modpath[$self]:-}" ]; then
			[ -n "${builtin[$self]:-}" ] || [ -n "$opt" ] || die "$kpkg has no module $self (neither loadable nor built in)"
			return 0
		fi
		for s in ${softpre[$self]:-}; do
			if [ -n "${modpath[${s//-/_}]:-}" ]; then
				resolve "$s" optional
			else
				for p in $(awk -v a="$s" '$1 == "alias" && $2 == a {print $3}' "$moddir/modules.alias"); do
					resolve "$p" optional
				done
			fi
		done
		for d in ${moddeps[$self]}; do
			modname "$d" # sets n
			resolve "$n" "$opt"
		done
		load+=("$self ${modpath[$self]}${opt:+ optional}")
	}
	for m in $INITRD_MODULES; do resolve "$m"; done

	ir=$work/initrd
	mkdir -p "$ir"/{bin,dev,proc,sys,newroot,lib/modules}
	install -m 0755 /bin/busybox "$ir/bin/busybox"
	initrd_init >"$ir/init"
	chmod 0755 "$ir/init"
	# The kernel opens /dev/console for /init before anything is mounted.
	mknod -m 0600 "$ir/dev/console" c 5 1
	: >"$ir/lib/modules/load"
	for entry in "${load[@]}"; do
		read -r n path opt <<<"$entry"
		f=$n.ko
		# busybox insmod reads plain .ko files; Ubuntu's are compressed.
		case $path in
		*.ko) cp "$moddir/$path" "$ir/lib/modules/$f" ;;
		*.ko.xz) ensure_packages xz-utils && xz -dc "$moddir/$path" >"$ir/lib/modules/$f" ;;
		*.ko.zst) ensure_packages zstd && zstd -dcq "$moddir/$path" >"$ir/lib/modules/$f" ;;
		*.ko.gz) gzip -dc "$moddir/$path" >"$ir/lib/modules/$f" ;;
		*) die "module $path: unknown compression" ;;
		esac
		echo "$n $f${opt:+ $opt}" >>"$ir/lib/modules/load"
	done
	say "initrd modules: $(cut -d' ' -f1 "$ir/lib/modules/load" | tr '\n' ' ')"
	find "$ir" -exec touch -h -d "@$epoch" {} +
	(cd "$ir" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) | gzip -9 -n >"$work/initrd.cpio.gz"
	# Check what the kernel will unpack: /init and every module.
	listing=$(gzip -dc "$work/initrd.cpio.gz" | cpio --list --quiet)
	for f in init bin/busybox lib/modules/load $(cut -d' ' -f2 "$ir/lib/modules/load" | sed 's|^|lib/modules/|'); do
		grep -qx "$f" <<<"$listing" || die "the new initrd lacks $f"
	done
	install -m 0444 "$work/initrd.cpio.gz" "$initrd.partial"
	mv "$initrd.partial" "$initrd"
	say "initrd: $initrd ($(stat -c %s "$initrd") bytes, ${#load[@]} modules)"
fi

# ---------------------------------------------------------------- rootfs

if [ -e "$rootfs" ]; then
	say "rootfs $rootfs exists: keeping it"
else
	say "building a ${ROOTFS_MIB} MiB busybox $bbver rootfs"
	root=$work/root
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,dev,proc,sys,tmp,root,run,var/log,srv/probe}
	chmod 1777 "$root/tmp"
	install -m 0755 /bin/busybox "$root/bin/busybox"
	/bin/busybox --list-full | while read -r applet; do
		[ "$applet" = bin/busybox ] || [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
	done
	rootfs_inittab >"$root/etc/inittab"
	rootfs_rcS >"$root/etc/init.d/rcS"
	chmod 0755 "$root/etc/init.d/rcS"
	probe_text >"$root/srv/probe/index.html"
	ln -s ../run/resolv.conf "$root/etc/resolv.conf"
	echo nexus-vm >"$root/etc/hostname"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
	echo 'root:x:0:' >"$root/etc/group"
	printf 'NAME="Nexus busybox"\nVERSION_ID=%s\n' "$bbver" >"$root/etc/os-release"
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

if [ -n "${IMAGES_MANIFEST:-}" ]; then
	cat >"$IMAGES_MANIFEST.partial" <<-EOF
		KERNEL=$kernel
		INITRD=$initrd
		ROOTFS=$rootfs
		KERNEL_NAME=$kernel_name
		INITRD_NAME=$initrd_name
		ROOTFS_NAME=$rootfs_name
	EOF
	mv "$IMAGES_MANIFEST.partial" "$IMAGES_MANIFEST"
fi

# ---------------------------------------------------------------- register

# What a VM boots with: Nexus's defaults, the root drive, and the guest's
# address on its host's bridge, the gateway doubling as name server
# (guest.VM.CommandLine composes exactly this; docs/images.md).
example_args="console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off:172.20.0.1"
template_hint() {
	local with_initrd=$1
	if [ "$with_initrd" = yes ]; then
		echo "  nexus template create --name busybox --kernel-image $kernel_name --initrd-image $initrd_name --rootfs-image $rootfs_name"
	else
		echo "  nexus template create --name busybox --kernel-image $kernel_name --rootfs-image $rootfs_name"
		echo "  (without the initrd the distribution kernel cannot mount its root on real firecracker;"
		echo "   firecracker-sim boots it as is. This manager refused the kind initrd: it predates it."
		echo "   Upgrade it, rerun this script, and add --initrd-image $initrd_name.)"
	fi
	echo "  nexus vm create --name demo --template busybox"
	echo "  boot args of such a VM, e.g.: $example_args"
}

if [ -z "${NEXUS_ADDR:-}" ] || [ -z "${NEXUS_TOKEN:-}" ]; then
	say "NEXUS_ADDR/NEXUS_TOKEN not set: not registering. To register later:"
	echo "  nexus image add --kind kernel --name $kernel_name --path $kernel --project '$IMAGE_PROJECT'"
	echo "  nexus image add --kind initrd --name $initrd_name --path $initrd --project '$IMAGE_PROJECT'"
	echo "  nexus image add --kind rootfs --name $rootfs_name --path $rootfs --project '$IMAGE_PROJECT'"
	say "then a template from the three:"
	template_hint yes
	exit 0
fi
nexus=${NEXUS_BIN:-$(command -v nexus || echo ./bin/nexus)}
[ -x "$nexus" ] || die "no nexus CLI at $nexus (make build, or set NEXUS_BIN)"
proj=()
[ -n "$IMAGE_PROJECT" ] && proj=(--project "$IMAGE_PROJECT")

# register KIND NAME FILE registers FILE unless NAME is registered already.
# It prints the manager's refusal and fails like the CLI did.
register() {
	local kind=$1 name=$2 file=$3 sum existing
	sum=$(sha256sum "$file" | cut -d' ' -f1)
	if existing=$("$nexus" image get "$name" "${proj[@]}" -o json 2>/dev/null); then
		if grep -q "\"sha256\": \"$sum\"" <<<"$existing"; then
			say "$kind $name is registered already"
		else
			warn "an image named $name is registered with another checksum; left as it is"
		fi
		return 0
	fi
	say "registering $kind $name"
	"$nexus" image add --kind "$kind" --name "$name" --path "$file" --sha256 "$sum" "${proj[@]}"
}
register kernel "$kernel_name" "$kernel"
register rootfs "$rootfs_name" "$rootfs"
# A manager that does not know the kind initrd yet refuses it: say so and
# go on, the file is in place for when it does.
initrd_registered=yes
if ! out=$(register initrd "$initrd_name" "$initrd" 2>&1); then
	if grep -qi 'kind' <<<"$out"; then
		warn "this Nexus does not register initrd images yet ($(grep -v '^==> ' <<<"$out" | tr '\n' ' ' | cut -c1-200)); $initrd is in place, register it when the manager supports the kind"
		initrd_registered=no
	else
		printf '%s\n' "$out" >&2
		die "registering initrd $initrd_name failed"
	fi
else
	printf '%s\n' "$out"
fi
say "done. A template from them:"
template_hint "$initrd_registered"
