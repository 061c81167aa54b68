#include "config.h"

#include "util/blocking.h"

_Thread_local atomic_int *keel__blocking_counter;
