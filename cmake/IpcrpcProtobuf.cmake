# ipcrpc_add_proto_library(<target> PROTOS <file.proto>...
#                          [IMPORT_DIRS <dir>...] [DEPS <proto library>...])
#
# Runs protoc with protobuf's C++ generator and protoc-gen-ipcrpc and builds
# the messages and the stubs into the library <target>, linked to
# ipcrpc::ipcrpc and protobuf.
#
# Names. A proto is named (as protoc names it, and as its generated headers
# are included) by its path relative to the first import dir that holds it:
# IMPORT_DIRS, or without them the calling directory (as protobuf_generate
# does), or, for a proto outside all of those, its own directory. So
# `PROTOS a/v1/api.proto b/v1/api.proto` gives `#include "a/v1/api.ipcrpc.h"`
# and `#include "b/v1/api.ipcrpc.h"`, which coexist in one binary.
#
# Imports. Listing only the service's file is enough. Each file that PROTOS
# import (transitively) is taken from
#   - a DEPS library that generates it (DEPS are ipcrpc_add_proto_library
#     targets defined before this one; their import dirs are searched too),
#   - libprotobuf, for protobuf's own files (google/protobuf/*.proto),
#   - else it is generated and compiled into <target>, found in the import
#     dirs (then the DEPS' import dirs), as protoc would find it.
# Imports are read from the files at configure time (a file that changes
# re-runs the configure step).
#
# Generated files go to ${CMAKE_CURRENT_BINARY_DIR}/<target>_ipcrpc_gen, on
# <target>'s public include path. Every file gets NAME.ipcrpc.{h,cc}, also
# one without services (they then only include NAME.pb.h): build rules,
# Bazel's among them, must name their outputs before reading a file.
#
# The generated code is compiled as standard C++ (CXX_EXTENSIONS OFF): with
# GNU extensions `linux`, `unix` and `i386` are macros, which break fields of
# those names. If a proto has such a name, code that includes its headers is
# compiled with those macros undefined (-U, propagated to <target>'s users).
function(ipcrpc_add_proto_library target)
  cmake_parse_arguments(ARG "" "" "PROTOS;IMPORT_DIRS;DEPS" ${ARGN})
  set(self "ipcrpc_add_proto_library(${target})")
  if(NOT ARG_PROTOS)
    message(FATAL_ERROR "${self}: PROTOS is required")
  endif()
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "${self}: unknown arguments ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  set(out_dir "${CMAKE_CURRENT_BINARY_DIR}/${target}_ipcrpc_gen")
  file(MAKE_DIRECTORY "${out_dir}")

  # Import roots: ours, then the DEPS'.
  set(roots)
  foreach(dir IN LISTS ARG_IMPORT_DIRS)
    get_filename_component(dir "${dir}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    if(NOT IS_DIRECTORY "${dir}")
      message(FATAL_ERROR "${self}: IMPORT_DIRS ${dir} is not a directory")
    endif()
    list(APPEND roots "${dir}")
  endforeach()
  if(NOT ARG_IMPORT_DIRS)
    list(APPEND roots "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  set(listed)  # "name=abs" of PROTOS
  foreach(proto IN LISTS ARG_PROTOS)
    get_filename_component(abs "${proto}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    if(NOT EXISTS "${abs}")
      message(FATAL_ERROR "${self}: PROTOS ${proto}: no such file")
    endif()
    set(name "")
    foreach(dir IN LISTS roots)
      file(RELATIVE_PATH candidate "${dir}" "${abs}")
      if(NOT candidate MATCHES "^\\.\\./")
        set(name "${candidate}")
        break()
      endif()
    endforeach()
    if(name STREQUAL "")
      get_filename_component(dir "${abs}" DIRECTORY)
      list(APPEND roots "${dir}")
      get_filename_component(name "${abs}" NAME)
    endif()
    list(APPEND listed "${name}=${abs}")
  endforeach()
  list(REMOVE_DUPLICATES roots)

  set(dep_roots)
  set(provided)
  foreach(dep IN LISTS ARG_DEPS)
    if(NOT TARGET ${dep})
      message(FATAL_ERROR "${self}: DEPS ${dep} is not a target (define it first)")
    endif()
    get_target_property(dep_names ${dep} IPCRPC_PROTO_NAMES)
    get_target_property(dep_dirs ${dep} IPCRPC_PROTO_IMPORT_DIRS)
    if(NOT dep_names)
      message(FATAL_ERROR "${self}: DEPS ${dep} is not an ipcrpc_add_proto_library target")
    endif()
    list(APPEND provided ${dep_names})
    list(APPEND dep_roots ${dep_dirs})
  endforeach()
  list(REMOVE_DUPLICATES dep_roots)

  # protobuf's own .protos: imported, never generated.
  set(protobuf_roots ${Protobuf_INCLUDE_DIRS})
  if(NOT protobuf_roots AND TARGET protobuf::libprotobuf)
    get_target_property(protobuf_roots protobuf::libprotobuf INTERFACE_INCLUDE_DIRECTORIES)
  endif()
  set(search_roots ${roots} ${dep_roots})
  list(REMOVE_DUPLICATES search_roots)
  set(include_flags)
  foreach(dir IN LISTS search_roots protobuf_roots)
    list(APPEND include_flags "-I${dir}")
  endforeach()

  # What to generate: PROTOS and, transitively, what they import that no
  # DEPS library or libprotobuf has.
  set(names)
  set(pending ${listed})
  set(reserved_macro_names FALSE)
  while(pending)
    list(POP_FRONT pending entry)
    string(FIND "${entry}" "=" eq)
    string(SUBSTRING "${entry}" 0 ${eq} name)
    math(EXPR after "${eq} + 1")
    string(SUBSTRING "${entry}" ${after} -1 abs)
    if(name IN_LIST names)
      continue()
    endif()
    list(APPEND names "${name}")
    set(abs_of_${name} "${abs}")
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${abs}")
    _ipcrpc_proto_imports("${abs}" imports has_macro_name)
    if(has_macro_name)
      set(reserved_macro_names TRUE)
    endif()
    foreach(import IN LISTS imports)
      if(import IN_LIST names OR import IN_LIST provided)
        continue()
      endif()
      set(found "")
      foreach(dir IN LISTS search_roots)
        if(EXISTS "${dir}/${import}")
          set(found "${dir}/${import}")
          break()
        endif()
      endforeach()
      if(found STREQUAL "")
        set(in_protobuf FALSE)
        foreach(dir IN LISTS protobuf_roots)
          if(EXISTS "${dir}/${import}")
            set(in_protobuf TRUE)
          endif()
        endforeach()
        if(in_protobuf)
          continue()
        endif()
        string(REPLACE ";" ", " searched "${search_roots}")
        message(FATAL_ERROR "${self}: ${abs} imports \"${import}\", which no DEPS library "
                            "generates and none of the import dirs (${searched}) holds")
      endif()
      list(APPEND pending "${import}=${found}")
    endforeach()
  endwhile()

  set(sources)
  set(headers)
  foreach(name IN LISTS names)
    set(abs "${abs_of_${name}}")
    string(REGEX REPLACE "\\.proto$" "" base "${name}")
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
      COMMENT "protoc-gen-ipcrpc: ${name}"
      VERBATIM)
    list(APPEND sources "${out_dir}/${base}.pb.cc" "${out_dir}/${base}.ipcrpc.cc")
    list(APPEND headers "${out_dir}/${base}.pb.h" "${out_dir}/${base}.ipcrpc.h")
  endforeach()

  add_library(${target} ${sources} ${headers})
  target_include_directories(${target} PUBLIC "$<BUILD_INTERFACE:${out_dir}>")
  target_link_libraries(${target} PUBLIC ${ARG_DEPS} ipcrpc::ipcrpc protobuf::libprotobuf)
  target_compile_features(${target} PUBLIC cxx_std_20)
  # UNITY_BUILD OFF: protoc's .pb.cc files define the same file-local names
  # (schemas, file_default_instances) and cannot share a translation unit,
  # and the generated files are built one at a time even in a user's unity
  # build (CMAKE_UNITY_BUILD).
  set_target_properties(${target} PROPERTIES
    CXX_EXTENSIONS OFF
    UNITY_BUILD OFF
    IPCRPC_PROTO_NAMES "${names};${provided}"
    IPCRPC_PROTO_IMPORT_DIRS "${search_roots}")
  if(reserved_macro_names)
    target_compile_options(${target} INTERFACE
      "$<$<AND:$<COMPILE_LANGUAGE:CXX>,$<OR:$<CXX_COMPILER_ID:GNU>,$<CXX_COMPILER_ID:Clang>>>:-Ulinux;-Uunix;-Ui386>")
  endif()
endfunction()

# The files `proto` imports (`import`, `import public`, `import weak`), and
# whether it names something `linux`, `unix` or `i386` (a macro under GNU
# extensions). Read with regular expressions after comments are removed:
# enough for the grammar of an import statement.
function(_ipcrpc_proto_imports proto out_imports out_macro_name)
  file(READ "${proto}" text)
  # One statement per line; no list separators inside the text.
  string(REPLACE ";" "\n" text "${text}")
  string(REGEX REPLACE "//[^\n]*" "" text "${text}")
  string(REGEX REPLACE "/\\*([^*]|\\*+[^*/])*\\*+/" "" text "${text}")
  string(REGEX MATCHALL "(^|\n)[ \t\r]*import[ \t\r\n]+((public|weak)[ \t\r\n]+)?\"[^\"\n]+\""
         statements "${text}")
  set(imports)
  foreach(statement IN LISTS statements)
    string(REGEX REPLACE ".*\"([^\"]+)\"$" "\\1" import "${statement}")
    list(APPEND imports "${import}")
  endforeach()
  set(macro_name FALSE)
  if(text MATCHES "(^|[^A-Za-z0-9_.])(linux|unix|i386)[ \t\r\n]*(=|\\{)")
    set(macro_name TRUE)
  endif()
  set(${out_imports} "${imports}" PARENT_SCOPE)
  set(${out_macro_name} ${macro_name} PARENT_SCOPE)
endfunction()
