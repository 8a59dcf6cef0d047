// tessera/placement/split.hpp — the split states of tensor-parallel values,
// Distributed<Replicated<Ds...> | Sharded<Axis, Ds...> | Partial<Ds...>, T>
// (DESIGN.md § Placement). They live in core/distributed.hpp, below both
// comm/ (which reduces them) and placement/ (whose stages carry them); this
// header forwards there so existing includes keep working.
#pragma once

#include "../core/distributed.hpp"
