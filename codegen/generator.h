// protoc-gen-ipcrpc's generator: for every .proto it writes NAME.ipcrpc.h and
// NAME.ipcrpc.cc next to protobuf's NAME.pb.* (for a .proto without services
// they only include its .pb.h, so that build rules can name their outputs up
// front). The code is
// plain functions that print $var$ templates; everything generated uses fully
// qualified names (::ipcrpc::, ::absl::, ::std::) and only the public API.
#ifndef IPCRPC_CODEGEN_GENERATOR_H_
#define IPCRPC_CODEGEN_GENERATOR_H_

#include <string>

#include <google/protobuf/compiler/code_generator.h>
#include <google/protobuf/descriptor.h>

namespace ipcrpc::codegen {

class IpcrpcGenerator final : public google::protobuf::compiler::CodeGenerator {
 public:
  // Parameters (key=value, comma-separated): include_prefix=DIR/ is put
  // before the generated #includes of NAME.pb.h and NAME.ipcrpc.h. Any other
  // key is refused.
  bool Generate(const google::protobuf::FileDescriptor* file, const std::string& parameter,
                google::protobuf::compiler::GeneratorContext* context,
                std::string* error) const override;

  uint64_t GetSupportedFeatures() const override { return FEATURE_PROTO3_OPTIONAL; }
};

// The C++ identifier for a proto name: C++ keywords and the names the
// generated classes use themselves (Stub, Service) get a trailing '_'.
std::string CppIdentifier(const std::string& name);

}  // namespace ipcrpc::codegen

#endif  // IPCRPC_CODEGEN_GENERATOR_H_
