# Resolves TRIDENT_WITH_CUDA / TRIDENT_WITH_NCCL (ON, OFF, AUTO) into TRIDENT_HAVE_CUDA and
# TRIDENT_HAVE_NCCL. AUTO turns a feature on when its toolkit is found; ON makes it required.
#
# Only the CUDA runtime (CUDA::cudart, shared) and libnccl are linked, never the driver API:
# both load libcuda.so themselves at run time, so every binary also loads and runs on a
# machine with the CUDA libraries but no GPU or driver (it then sees no CUDA device).
set(TRIDENT_HAVE_CUDA OFF)
set(TRIDENT_HAVE_NCCL OFF)
if(NOT TRIDENT_WITH_CUDA STREQUAL "OFF")
  if(NOT CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
    set(CUDAToolkit_ROOT /usr/local/cuda)
  endif()
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND AND TARGET CUDA::cudart)
    set(TRIDENT_HAVE_CUDA ON)
  elseif(TRIDENT_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "TRIDENT_WITH_CUDA=ON but no CUDA toolkit was found; set CUDAToolkit_ROOT")
  endif()
endif()
if(NOT TRIDENT_WITH_NCCL STREQUAL "OFF")
  if(TRIDENT_HAVE_CUDA)
    find_package(NCCL QUIET)
  endif()
  if(NCCL_FOUND)
    set(TRIDENT_HAVE_NCCL ON)
  elseif(TRIDENT_WITH_NCCL STREQUAL "ON")
    message(FATAL_ERROR "TRIDENT_WITH_NCCL=ON but CUDA or nccl.h / libnccl were not found "
                        "(set CUDAToolkit_ROOT, NCCL_ROOT)")
  endif()
endif()
if(TRIDENT_HAVE_NCCL)
  message(STATUS "trident: CUDA ON (${CUDAToolkit_VERSION}), NCCL ON (${NCCL_VERSION})")
else()
  message(STATUS "trident: CUDA ${TRIDENT_HAVE_CUDA}, NCCL OFF")
endif()
