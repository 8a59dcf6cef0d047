// tessera/placement/single.hpp — kept for includes written before the
// pipeline and tensor-parallel policies: Single<D> lives in policy.hpp.
#pragma once

#include "policy.hpp"
