################################################################################
#
# dnsd
#
################################################################################

DNSD_SITE = $(APPLIANCE_WORKSPACE)
DNSD_SITE_METHOD = local
DNSD_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = $(APPLIANCE_WORKSPACE_RSYNC_EXCLUSIONS)
DNSD_SUBDIR = dnsd
DNSD_LICENSE = Apache-2.0
DNSD_LICENSE_FILES = LICENSE
DNSD_PRE_CONFIGURE_HOOKS += APPLIANCE_WORKSPACE_VENDOR

$(eval $(cargo-package))
