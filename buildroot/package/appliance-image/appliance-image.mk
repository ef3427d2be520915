################################################################################
#
# appliance-image
#
################################################################################

APPLIANCE_IMAGE_SITE = $(APPLIANCE_WORKSPACE)
APPLIANCE_IMAGE_SITE_METHOD = local
HOST_APPLIANCE_IMAGE_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = $(APPLIANCE_WORKSPACE_RSYNC_EXCLUSIONS)
APPLIANCE_IMAGE_SUBDIR = image
APPLIANCE_IMAGE_LICENSE = Apache-2.0
APPLIANCE_IMAGE_LICENSE_FILES = LICENSE
HOST_APPLIANCE_IMAGE_PRE_CONFIGURE_HOOKS += APPLIANCE_WORKSPACE_VENDOR

$(eval $(host-cargo-package))
