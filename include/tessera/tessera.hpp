// tessera/tessera.hpp — the umbrella header: everything a program needs.
#pragma once

#include "core/device.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/memory.hpp"
#include "core/shape.hpp"
#include "core/tensor.hpp"
#include "core/transfer.hpp"
