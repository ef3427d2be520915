################################################################################
#
# netd
#
################################################################################

NETD_SITE = $(APPLIANCE_WORKSPACE)
NETD_SITE_METHOD = local
NETD_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = $(APPLIANCE_WORKSPACE_RSYNC_EXCLUSIONS)
NETD_SUBDIR = netd
NETD_LICENSE = Apache-2.0
NETD_LICENSE_FILES = LICENSE
NETD_PRE_CONFIGURE_HOOKS += APPLIANCE_WORKSPACE_VENDOR

$(eval $(cargo-package))
