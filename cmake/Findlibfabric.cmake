# Findlibfabric: libfabric ships only a pkg-config file, so this module wraps it.
#
# Defines the imported target libfabric::libfabric and libfabric_FOUND, libfabric_VERSION.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_LIBFABRIC QUIET libfabric)
endif()

find_path(libfabric_INCLUDE_DIR rdma/fabric.h HINTS ${PC_LIBFABRIC_INCLUDE_DIRS})
find_library(libfabric_LIBRARY NAMES fabric HINTS ${PC_LIBFABRIC_LIBRARY_DIRS})
set(libfabric_VERSION ${PC_LIBFABRIC_VERSION})

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(libfabric
  REQUIRED_VARS libfabric_LIBRARY libfabric_INCLUDE_DIR
  VERSION_VAR libfabric_VERSION)

if(libfabric_FOUND AND NOT TARGET libfabric::libfabric)
  add_library(libfabric::libfabric UNKNOWN IMPORTED)
  set_target_properties(libfabric::libfabric PROPERTIES
    IMPORTED_LOCATION "${libfabric_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${libfabric_INCLUDE_DIR}")
endif()
mark_as_advanced(libfabric_INCLUDE_DIR libfabric_LIBRARY)
