################################################################################
#
# appliance
#
################################################################################

APPLIANCE_SITE = $(APPLIANCE_WORKSPACE)
APPLIANCE_SITE_METHOD = local
APPLIANCE_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = $(APPLIANCE_WORKSPACE_RSYNC_EXCLUSIONS)
APPLIANCE_SUBDIR = appliance
APPLIANCE_LICENSE = Apache-2.0
APPLIANCE_LICENSE_FILES = LICENSE
APPLIANCE_PRE_CONFIGURE_HOOKS += APPLIANCE_WORKSPACE_VENDOR

$(eval $(cargo-package))
