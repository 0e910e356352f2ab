# ipcrpc_add_proto_library(<target> PROTOS <file.proto>... [IMPORT_DIRS <dir>...])
#
# Runs protoc with protobuf's C++ generator and protoc-gen-ipcrpc on PROTOS and
# builds the messages and the stubs into the library <target>, linked to
# ipcrpc::ipcrpc and protobuf. Generated files go to
# ${CMAKE_CURRENT_BINARY_DIR}/<target>_ipcrpc_gen, which is on <target>'s public
# include path: a proto `sub/calc.proto` (relative to its import dir) is used as
# `#include "sub/calc.ipcrpc.h"`.
#
# Import dirs: IMPORT_DIRS, then the directory of each proto; the first that
# contains a proto names it. protobuf's own well-known types are always found.
function(ipcrpc_add_proto_library target)
  cmake_parse_arguments(ARG "" "" "PROTOS;IMPORT_DIRS" ${ARGN})
  if(NOT ARG_PROTOS)
    message(FATAL_ERROR "ipcrpc_add_proto_library(${target}): PROTOS is required")
  endif()
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ipcrpc_add_proto_library(${target}): unknown arguments ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  set(out_dir "${CMAKE_CURRENT_BINARY_DIR}/${target}_ipcrpc_gen")
  file(MAKE_DIRECTORY "${out_dir}")

  set(import_dirs)
  foreach(dir IN LISTS ARG_IMPORT_DIRS)
    get_filename_component(dir "${dir}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND import_dirs "${dir}")
  endforeach()
  foreach(proto IN LISTS ARG_PROTOS)
    get_filename_component(abs "${proto}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    get_filename_component(dir "${abs}" DIRECTORY)
    list(APPEND import_dirs "${dir}")
  endforeach()
  list(REMOVE_DUPLICATES import_dirs)
  set(include_flags)
  foreach(dir IN LISTS import_dirs)
    list(APPEND include_flags "-I${dir}")
  endforeach()
  if(Protobuf_INCLUDE_DIRS)
    foreach(dir IN LISTS Protobuf_INCLUDE_DIRS)
      list(APPEND include_flags "-I${dir}")
    endforeach()
  endif()

  set(sources)
  set(headers)
  foreach(proto IN LISTS ARG_PROTOS)
    get_filename_component(abs "${proto}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    set(rel "")
    foreach(dir IN LISTS import_dirs)
      file(RELATIVE_PATH candidate "${dir}" "${abs}")
      if(NOT candidate MATCHES "^\\.\\./")
        set(rel "${candidate}")
        break()
      endif()
    endforeach()
    string(REGEX REPLACE "\\.proto$" "" base "${rel}")
    set(outputs
      "${out_dir}/${base}.pb.cc" "${out_dir}/${base}.pb.h"
      "${out_dir}/${base}.ipcrpc.cc" "${out_dir}/${base}.ipcrpc.h")
    add_custom_command(
      OUTPUT ${outputs}
      COMMAND protobuf::protoc
        "--plugin=protoc-gen-ipcrpc=$<TARGET_FILE:ipcrpc::protoc-gen-ipcrpc>"
        "--cpp_out=${out_dir}" "--ipcrpc_out=${out_dir}"
        ${include_flags} "${abs}"
      DEPENDS "${abs}" ipcrpc::protoc-gen-ipcrpc protobuf::protoc
      COMMENT "protoc-gen-ipcrpc: ${rel}"
      VERBATIM)
    list(APPEND sources "${out_dir}/${base}.pb.cc" "${out_dir}/${base}.ipcrpc.cc")
    list(APPEND headers "${out_dir}/${base}.pb.h" "${out_dir}/${base}.ipcrpc.h")
  endforeach()

  add_library(${target} ${sources} ${headers})
  target_include_directories(${target} PUBLIC "${out_dir}")
  target_link_libraries(${target} PUBLIC ipcrpc::ipcrpc protobuf::libprotobuf)
  target_compile_features(${target} PUBLIC cxx_std_20)
endfunction()
