#include "config.h"

#include "util/blocking.h"

_Thread_local struct keel__blocking *keel__blocking_counter;
