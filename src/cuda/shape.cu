// Instantiates the strided-copy kernel behind to<>, contiguous() and the
// shape ops on CUDA (include/tessera/ops/cuda/shape.cuh), per element size.
#include <tessera/ops/cuda/shape.cuh>

namespace tessera::cuda {
template void launch_copy_strided<std::uint8_t>(const LaunchContext&, std::uint8_t*, const StridedLayout&,
                                                const std::uint8_t*, const StridedLayout&);
template void launch_copy_strided<std::uint16_t>(const LaunchContext&, std::uint16_t*, const StridedLayout&,
                                                 const std::uint16_t*, const StridedLayout&);
template void launch_copy_strided<std::uint32_t>(const LaunchContext&, std::uint32_t*, const StridedLayout&,
                                                 const std::uint32_t*, const StridedLayout&);
template void launch_copy_strided<std::uint64_t>(const LaunchContext&, std::uint64_t*, const StridedLayout&,
                                                 const std::uint64_t*, const StridedLayout&);
}  // namespace tessera::cuda
