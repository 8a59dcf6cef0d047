// tessera/tessera.hpp — the umbrella header: everything a program needs.
#pragma once

// core: devices, dtypes, shapes, tensors and views, the memory ledger, to<>
#include "core/device.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/memory.hpp"
#include "core/shape.hpp"
#include "core/tensor.hpp"
#include "core/transfer.hpp"

// ops: one header per op family
#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/elementwise.hpp"
#include "ops/embedding.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"
#include "ops/patch_embed.hpp"
#include "ops/reduce.hpp"
#include "ops/rope.hpp"
#include "ops/shape.hpp"
#include "ops/softmax.hpp"

// nn: layers
#include "nn/linear.hpp"
