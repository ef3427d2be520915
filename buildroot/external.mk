# Every package of this tree builds one crate of the Cargo workspace this tree lives in
# (its parent directory), as a local package: a workspace checkout is its own source, so
# there is nothing to download and no hash to check. Its build output is not copied.
APPLIANCE_WORKSPACE = $(realpath $(BR2_EXTERNAL_APPLIANCE_PATH)/..)
APPLIANCE_WORKSPACE_RSYNC_EXCLUSIONS = \
	--exclude /target --exclude /fuzz/target --exclude /fuzz/corpus

# Buildroot vendors the crates of a cargo package when it downloads it; a local package is
# not downloaded, so this hook does the same before the build: the crates of Cargo.lock
# (--locked) go to VENDOR, and cargo's config points there, so that the build runs
# offline with --locked. It runs after the dependencies, host-rustc among them, are built.
define APPLIANCE_WORKSPACE_VENDOR
	cd $(@D) && mkdir -p .cargo && \
		$(HOST_MAKE_ENV) CARGO_HOME=$(BR_CARGO_HOME) \
		cargo vendor --locked --versioned-dirs --manifest-path Cargo.toml VENDOR \
		> .cargo/config.toml
endef

include $(sort $(wildcard $(BR2_EXTERNAL_APPLIANCE_PATH)/package/*/*.mk))
