# How CTest starts programs under MPI (tests/mpi, the examples' tp tests):
# TESSERA_MPIEXEC_FLAGS and TESSERA_MPI_TEST_ENVIRONMENT. The environment
# lets Open MPI start in a container: as root (CI), without ssh/rsh (plm
# isolated: every rank on this node), more ranks than cores
# (oversubscribe), and without the cross-memory-attach copies that
# containers' ptrace restrictions break.
set(TESSERA_MPI_TEST_ENVIRONMENT TESSERA_POISON_ALLOCATIONS=1)
set(TESSERA_MPIEXEC_FLAGS "")
execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE _tessera_mpiexec_version
                ERROR_QUIET TIMEOUT 30)
if(_tessera_mpiexec_version MATCHES "Open MPI|OpenRTE")
  list(APPEND TESSERA_MPIEXEC_FLAGS --oversubscribe)
  list(APPEND TESSERA_MPI_TEST_ENVIRONMENT OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
       OMPI_MCA_plm=isolated OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1)
endif()

# Under AddressSanitizer, Open MPI's own allocations (MCA components, PMIx)
# are reported as leaks at exit, from modules already unloaded, so they
# cannot be suppressed by name: leak checking is off for the MPI tests only
# (the unit tests, MPI-free, keep it). Errors and UBSan checks stay on.
if(CMAKE_CXX_FLAGS MATCHES "-fsanitize=[^ ]*address")
  list(APPEND TESSERA_MPI_TEST_ENVIRONMENT ASAN_OPTIONS=detect_leaks=0)
endif()
