# FindHttplib: cpp-httplib (Debian: libcpp-httplib-dev) ships a compiled library and a
# pkg-config file whose Cflags carry the feature macros the library was built with (they change
# the header's classes, so every user must define the same ones). The store layer's etcd client
# (src/store/etcd_store.cc) talks to etcd's JSON gateway through it.
#
# Defines the imported target Httplib::httplib and Httplib_FOUND, Httplib_VERSION.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_HTTPLIB QUIET cpp-httplib)
endif()

find_path(Httplib_INCLUDE_DIR httplib.h HINTS ${PC_HTTPLIB_INCLUDE_DIRS})
find_library(Httplib_LIBRARY NAMES cpp-httplib HINTS ${PC_HTTPLIB_LIBRARY_DIRS})
set(Httplib_VERSION ${PC_HTTPLIB_VERSION})

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Httplib
  REQUIRED_VARS Httplib_LIBRARY Httplib_INCLUDE_DIR
  VERSION_VAR Httplib_VERSION)

if(Httplib_FOUND AND NOT TARGET Httplib::httplib)
  set(_httplib_defs)
  foreach(flag ${PC_HTTPLIB_CFLAGS_OTHER})
    if(flag MATCHES "^-D(.+)$")
      list(APPEND _httplib_defs ${CMAKE_MATCH_1})
    endif()
  endforeach()
  add_library(Httplib::httplib UNKNOWN IMPORTED)
  set_target_properties(Httplib::httplib PROPERTIES
    IMPORTED_LOCATION "${Httplib_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${Httplib_INCLUDE_DIR}"
    INTERFACE_COMPILE_DEFINITIONS "${_httplib_defs}")
endif()
mark_as_advanced(Httplib_INCLUDE_DIR Httplib_LIBRARY)
