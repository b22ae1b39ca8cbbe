#include "audit/net_sinks.h"
