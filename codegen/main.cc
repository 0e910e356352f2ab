// protoc-gen-ipcrpc: protoc plugin that generates ipcrpc stubs and services.
//
//   protoc --plugin=protoc-gen-ipcrpc=PATH --ipcrpc_out=OUT --cpp_out=OUT calc.proto
//
// protoc runs it without arguments and talks to it over stdin/stdout; run
// by hand, it answers --help and --version.
#include <google/protobuf/compiler/plugin.h>
#include <google/protobuf/stubs/common.h>

#include <cstdio>
#include <cstring>

#include "codegen/generator.h"

#ifndef IPCRPC_VERSION
#define IPCRPC_VERSION "unknown"
#endif

namespace {

constexpr char kHelp[] =
    "protoc-gen-ipcrpc: the protoc plugin that generates ipcrpc C++ stubs and\n"
    "service bases from the services of .proto files.\n"
    "\n"
    "It is run by protoc, not by hand:\n"
    "  protoc --plugin=protoc-gen-ipcrpc=PATH --ipcrpc_out=[OPTIONS:]OUT_DIR \\\n"
    "         --cpp_out=OUT_DIR [-IIMPORT_DIR]... FILE.proto...\n"
    "writes FILE.ipcrpc.h and FILE.ipcrpc.cc beside protobuf's FILE.pb.h/.pb.cc\n"
    "(also for a file without services: they then only include its .pb.h, so\n"
    "that build rules can name their outputs before reading the file).\n"
    "\n"
    "OPTIONS (comma-separated):\n"
    "  include_prefix=DIR   #include \"DIR/FILE.pb.h\" instead of \"FILE.pb.h\"\n"
    "\n"
    "CMake: ipcrpc_add_proto_library(target PROTOS f.proto [IMPORT_DIRS d] [DEPS lib])\n"
    "does all of this; Bazel: ipcrpc_cc_proto_library in @ipcrpc//:defs.bzl.\n"
    "\n"
    "  --help      this text\n"
    "  --version   the plugin's version\n";

}  // namespace

int main(int argc, char* argv[]) {
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (argc == 2 && std::strcmp(argv[1], "--version") == 0) {
    std::printf("protoc-gen-ipcrpc %s (ipcrpc wire protocol 1; built with protobuf %s)\n",
                IPCRPC_VERSION,
                google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION).c_str());
    return 0;
  }
  if (argc > 1) {
    std::fprintf(stderr,
                 "protoc-gen-ipcrpc: unknown argument '%s'; protoc runs this plugin without "
                 "arguments (see --help)\n",
                 argv[1]);
    return 2;
  }
  ipcrpc::codegen::IpcrpcGenerator generator;
  return google::protobuf::compiler::PluginMain(argc, argv, &generator);
}
