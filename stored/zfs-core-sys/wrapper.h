/* Everything the bindings cover: libzfs_core and the libnvpair it passes nvlists through. */
#include <libzfs_core.h>
#include <libnvpair.h>
