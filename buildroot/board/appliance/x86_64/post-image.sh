#!/usr/bin/env bash
# Makes the flashable disk image (genimage.cfg: the layout of image/src/disk.rs) and the
# signed OTA bundle of the root image, which `applctl update install` takes.
#
# Environment (optional): APPLIANCE_KEYS, as for post-build.sh. A directory that holds
# the public keys only (the secret ones kept offline) gives an unsigned bundle to finish
# with `appliance-image bundle sign`.
set -euo pipefail

BOARD_DIR="$(dirname "$0")"
KEYS="${APPLIANCE_KEYS:-${BASE_DIR}/keys}"
IMAGE_TOOL="${HOST_DIR}/bin/appliance-image"

# The boot state GRUB starts from: slot A committed, B empty (image/src/bootstate.rs).
cp "${BOARD_DIR}/grubenv.0" "${BOARD_DIR}/grubenv.1" "${BINARIES_DIR}/"
support/scripts/genimage.sh -c "${BOARD_DIR}/genimage.cfg"

# The bundle carries the release the root says it is (written by post-build.sh).
release_field() {
	sed -n "s/^$1=//p" "${TARGET_DIR}/usr/lib/appliance/release"
}
version="$(release_field VERSION)"
security_version="$(release_field SECURITY_VERSION)"
bundle="${BINARIES_DIR}/appliance-${version}.bundle"

sign=()
for key in "${KEYS}"/*.key; do
	[ -e "${key}" ] && sign+=(--key "${key}")
done
"${IMAGE_TOOL}" bundle create \
	--root "${BINARIES_DIR}/rootfs.squashfs" \
	--version "${version}" \
	--security-version "${security_version}" \
	"${sign[@]}" \
	--out "${bundle}"
if [ "${#sign[@]}" -eq 0 ]; then
	echo "post-image: no secret key in ${KEYS}: ${bundle} is unsigned;" \
		"sign it with appliance-image bundle sign --key KEY ${bundle}" >&2
else
	# As a device running this image would check it.
	"${IMAGE_TOOL}" bundle verify \
		--keyring "${TARGET_DIR}/usr/share/appliance/update-keys" "${bundle}"
fi
(cd "${BINARIES_DIR}" && sha256sum appliance.img rootfs.squashfs "$(basename "${bundle}")" \
	>SHA256SUMS)
