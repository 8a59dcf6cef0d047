// OpenBLAS must share tessera's thread pool: with OpenMP loops in tessera, a
// pthread OpenBLAS keeps a second pool and the two compete for cores (a GEMM
// right after a parallel loop measured 13x slower). CMake prefers Debian's
// OpenMP build of OpenBLAS; this test fails if a build silently got another.
#include <gtest/gtest.h>

#include <cblas.h>

TEST(BlasThreading, OpenBlasUsesOpenMpWhenTesseraDoes) {
  const int model = openblas_get_parallel();  // 0 sequential, 1 pthreads, 2 OpenMP
#if defined(_OPENMP)
  EXPECT_NE(model, 1) << "tessera is built with OpenMP but OpenBLAS runs its own pthread pool; "
                         "install libopenblas-openmp-dev (Debian/Ubuntu) and reconfigure";
#else
  EXPECT_GE(model, 0);
#endif
}
