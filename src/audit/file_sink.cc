#include "audit/file_sink.h"
