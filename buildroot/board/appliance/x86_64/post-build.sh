#!/usr/bin/env bash
# Turns Buildroot's target tree into the appliance root, as image/src/rootfs.rs does for
# the QEMU image: the kernel and an initrd where GRUB's config (image/src/grub.cfg) loads
# them, the release file and update keyring the updater reads, and the units of units.txt.
# Buildroot has already copied the overlay (image/overlay) over the tree.
#
# Environment (all optional):
#   APPLIANCE_RELEASE           release version, MAJOR.MINOR.PATCH [the workspace version]
#   APPLIANCE_SECURITY_VERSION  anti-rollback level [1]
#   APPLIANCE_KEYS              directory of the release keys (*.pub, *.key from
#                               `appliance-image keygen`) [$BASE_DIR/keys; a development
#                               key is made there when it holds none]
set -euo pipefail

TARGET="$1"
BOARD_DIR="$(dirname "$0")"
WORKSPACE="$(realpath "${BOARD_DIR}/../../../..")"
KEYS="${APPLIANCE_KEYS:-${BASE_DIR}/keys}"

workspace_version() {
	sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' \
		"${WORKSPACE}/Cargo.toml"
}
RELEASE="${APPLIANCE_RELEASE:-$(workspace_version)}"
SECURITY_VERSION="${APPLIANCE_SECURITY_VERSION:-1}"

# GRUB loads /vmlinuz and /initrd.img from the slot. What the root needs to be mounted
# is built into the kernel (linux.fragment), so the initrd is an empty archive.
install -m 0644 "${BINARIES_DIR}/bzImage" "${TARGET}/vmlinuz"
initrd_dir="$(mktemp -d)"
(cd "${initrd_dir}" && find . | cpio --quiet -o -H newc) >"${TARGET}/initrd.img"
rmdir "${initrd_dir}"

# Each box makes its own machine id and SSH host keys at first boot.
: >"${TARGET}/etc/machine-id"
rm -f "${TARGET}"/etc/ssh/ssh_host_*
mkdir -p "${TARGET}/data" "${TARGET}/boot/efi"

# Debian's sshd_config reads sshd_config.d (where image/overlay puts the host key and
# authorized keys on /data); Buildroot's does not. First, since the first value wins.
if ! grep -q '^Include /etc/ssh/sshd_config.d/' "${TARGET}/etc/ssh/sshd_config"; then
	sed -i '1i Include /etc/ssh/sshd_config.d/*.conf' "${TARGET}/etc/ssh/sshd_config"
fi

mkdir -p "${TARGET}/usr/lib/appliance" "${TARGET}/usr/share/appliance"
printf 'VERSION=%s\nSECURITY_VERSION=%s\nCOMPATIBLE=appliance-x86_64-efi\n' \
	"${RELEASE}" "${SECURITY_VERSION}" >"${TARGET}/usr/lib/appliance/release"

if ! compgen -G "${KEYS}/*.pub" >/dev/null; then
	echo "post-build: no release key in ${KEYS}; making a development key" >&2
	"${HOST_DIR}/bin/appliance-image" keygen --out "${KEYS}" --name development
fi
{
	echo "# Keys whose signatures this release accepts on OTA bundles (appliance-image keygen)."
	echo "threshold 1"
	for pub in "${KEYS}"/*.pub; do
		awk 'NF { print $1; exit }' "${pub}"
	done
} >"${TARGET}/usr/share/appliance/update-keys"

while read -r verb a b; do
	case "${verb}" in
	"" | "#"*) ;;
	mode)
		chmod "${a}" "${TARGET}${b}"
		;;
	enable)
		mkdir -p "${TARGET}/etc/systemd/system/${a}"
		ln -sfn "${b}" "${TARGET}/etc/systemd/system/${a}/$(basename "${b}")"
		;;
	disable)
		rm -f "${TARGET}/etc/systemd/system/${a}"
		;;
	link)
		mkdir -p "$(dirname "${TARGET}${a}")"
		ln -sfn "${b}" "${TARGET}${a}"
		;;
	*)
		echo "post-build: ${BOARD_DIR}/units.txt: unknown line '${verb} ${a} ${b}'" >&2
		exit 1
		;;
	esac
done <"${BOARD_DIR}/units.txt"
