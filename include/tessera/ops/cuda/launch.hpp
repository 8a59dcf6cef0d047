// tessera/ops/cuda/launch.hpp — what an op header hands a CUDA launcher:
// LaunchContext, StridedLayout and strided_layout(). They are core runtime
// types and live in core/cuda_launch.hpp (core/ includes nothing above it,
// docs/architecture.md § The layers); this header keeps the launchers'
// includes short.
#pragma once

#include "../../core/cuda_launch.hpp"
