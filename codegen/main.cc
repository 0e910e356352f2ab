// protoc-gen-ipcrpc: protoc plugin that generates ipcrpc stubs and services.
//
//   protoc --plugin=protoc-gen-ipcrpc=PATH --ipcrpc_out=OUT --cpp_out=OUT calc.proto
#include <google/protobuf/compiler/plugin.h>

#include "codegen/generator.h"

int main(int argc, char* argv[]) {
  ipcrpc::codegen::IpcrpcGenerator generator;
  return google::protobuf::compiler::PluginMain(argc, argv, &generator);
}
