################################################################################
#
# stored
#
################################################################################

STORED_SITE = $(APPLIANCE_WORKSPACE)
STORED_SITE_METHOD = local
STORED_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = $(APPLIANCE_WORKSPACE_RSYNC_EXCLUSIONS)
STORED_SUBDIR = stored
STORED_LICENSE = Apache-2.0
STORED_LICENSE_FILES = LICENSE
STORED_PRE_CONFIGURE_HOOKS += APPLIANCE_WORKSPACE_VENDOR

# zfs-core-sys generates its bindings with bindgen (libclang) and links
# libzfs_core. The zfs package installs to the target only (no staging), so
# pkg-config, the headers and the linker look there.
STORED_DEPENDENCIES = zfs host-clang host-pkgconf
STORED_CARGO_ENV = \
	LIBCLANG_PATH=$(HOST_DIR)/lib \
	BINDGEN_EXTRA_CLANG_ARGS="--sysroot=$(STAGING_DIR) -I$(TARGET_DIR)/usr/include" \
	PKG_CONFIG_ALLOW_CROSS=1 \
	PKG_CONFIG_SYSROOT_DIR=$(TARGET_DIR) \
	PKG_CONFIG_LIBDIR=$(TARGET_DIR)/usr/lib/pkgconfig \
	RUSTFLAGS="-C link-arg=-Wl,-rpath-link,$(TARGET_DIR)/usr/lib"

$(eval $(cargo-package))
