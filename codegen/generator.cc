#include "codegen/generator.h"

#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <google/protobuf/compiler/code_generator.h>
#include <google/protobuf/compiler/cpp/names.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/io/printer.h>
#include <google/protobuf/io/zero_copy_stream.h>

namespace ipcrpc::codegen {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::FileDescriptor;
using google::protobuf::MethodDescriptor;
using google::protobuf::ServiceDescriptor;
using google::protobuf::io::Printer;
using Vars = std::map<std::string, std::string>;

const std::set<std::string>& Reserved() {
  static const auto* reserved = new std::set<std::string>{
      // C++ keywords and alternative tokens.
      "alignas", "alignof", "and", "and_eq", "asm", "auto", "bitand", "bitor", "bool", "break",
      "case", "catch", "char", "char8_t", "char16_t", "char32_t", "class", "compl", "concept",
      "const", "consteval", "constexpr", "constinit", "const_cast", "continue", "co_await",
      "co_return", "co_yield", "decltype", "default", "delete", "do", "double", "dynamic_cast",
      "else", "enum", "explicit", "export", "extern", "false", "float", "for", "friend", "goto",
      "if", "inline", "int", "long", "mutable", "namespace", "new", "noexcept", "not", "not_eq",
      "nullptr", "operator", "or", "or_eq", "private", "protected", "public", "register",
      "reinterpret_cast", "requires", "return", "short", "signed", "sizeof", "static",
      "static_assert", "static_cast", "struct", "switch", "template", "this", "thread_local",
      "throw", "true", "try", "typedef", "typeid", "typename", "union", "unsigned", "using",
      "virtual", "void", "volatile", "wchar_t", "while", "xor", "xor_eq",
      // Names the generated classes use themselves.
      "Stub", "Service", "kServiceName"};
  return *reserved;
}

std::string StripProto(const std::string& filename) {
  for (const char* suffix : {".protodevel", ".proto"}) {
    const std::string s(suffix);
    if (filename.size() > s.size() && filename.compare(filename.size() - s.size(), s.size(), s) == 0) {
      return filename.substr(0, filename.size() - s.size());
    }
  }
  return filename;
}

// "a.b.c" -> ["a", "b", "c"]; the namespaces protobuf's own code uses.
std::vector<std::string> PackageParts(const std::string& package) {
  std::vector<std::string> parts;
  std::string part;
  for (char c : package) {
    if (c == '.') {
      parts.push_back(part);
      part.clear();
    } else {
      part.push_back(c);
    }
  }
  if (!part.empty()) parts.push_back(part);
  return parts;
}

void OpenNamespaces(Printer& p, const std::string& package) {
  for (const std::string& part : PackageParts(package)) {
    p.Print("namespace $part$ {\n", "part", part);
  }
}

void CloseNamespaces(Printer& p, const std::string& package) {
  std::vector<std::string> parts = PackageParts(package);
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    p.Print("}  // namespace $part$\n", "part", *it);
  }
}

std::string HeaderGuard(const std::string& filename) {
  std::string guard = "IPCRPC_GENERATED_";
  for (char c : StripProto(filename)) {
    guard.push_back(std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::toupper(c)) : '_');
  }
  return guard + "_IPCRPC_H_";
}

// The method's C++ name; "...Async" is its async twin.
std::string MethodName(const MethodDescriptor* method) { return CppIdentifier(method->name()); }

// Proto comments (leading, then trailing) as "// " lines, indented.
std::string Comments(const google::protobuf::SourceLocation& location, const std::string& indent) {
  std::string text = location.leading_comments;
  if (!location.trailing_comments.empty()) {
    if (!text.empty() && text.back() != '\n') text.push_back('\n');
    text += location.trailing_comments;
  }
  std::string out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
    out += indent + (line.empty() ? "//" : "//" + (line[0] == ' ' ? line : " " + line)) + "\n";
    start = end + 1;
  }
  return out;
}

template <typename Descriptor>
std::string CommentsOf(const Descriptor* descriptor, const std::string& indent) {
  google::protobuf::SourceLocation location;
  if (!descriptor->GetSourceLocation(&location)) return "";
  return Comments(location, indent);
}

// Whether a generated unary handler may take its request or reply of this
// type from its thread's last call (ipcrpc::internal::ReusedMessage): only
// messages whose cleared form holds no more than their strings' capacity,
// which the handler checks before it keeps one. Protobuf's Clear() keeps
// the elements of repeated fields, maps, submessages and extensions, which
// a client could grow with a request of a few bytes (an empty element is 2
// bytes on the wire and tens in memory): such types get new messages every
// call.
bool Reusable(const Descriptor* type) {
  if (type->extension_range_count() > 0) return false;
  for (int i = 0; i < type->field_count(); ++i) {
    const FieldDescriptor* field = type->field(i);
    if (field->is_repeated() || field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      return false;
    }
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_STRING &&
        field->options().ctype() != google::protobuf::FieldOptions::STRING) {
      return false;
    }
  }
  return true;
}

// The capacities of a Reusable type's string and bytes fields in `object`,
// as a C++ list's elements: "reply.name().capacity(), reply.data().capacity()".
std::string StringCapacities(const Descriptor* type, const std::string& object) {
  namespace cpp = google::protobuf::compiler::cpp;
  std::string list;
  for (int i = 0; i < type->field_count(); ++i) {
    const FieldDescriptor* field = type->field(i);
    if (field->cpp_type() != FieldDescriptor::CPPTYPE_STRING) continue;
    if (!list.empty()) list += ", ";
    list += object + "." + cpp::FieldName(field) + "().capacity()";
  }
  return list;
}

Vars MethodVars(const ServiceDescriptor* service, const MethodDescriptor* method) {
  namespace cpp = google::protobuf::compiler::cpp;
  return {
      {"service", CppIdentifier(service->name())},
      {"method", MethodName(method)},
      {"full_method", service->full_name() + "/" + method->name()},
      {"request", cpp::QualifiedClassName(method->input_type())},
      {"reply", cpp::QualifiedClassName(method->output_type())},
      {"request_name", method->input_type()->full_name()},
      {"reply_name", method->output_type()->full_name()},
  };
}

enum class Kind { kUnary, kServerStreaming, kClientStreaming, kBidiStreaming };

Kind KindOf(const MethodDescriptor* method) {
  if (method->client_streaming() && method->server_streaming()) return Kind::kBidiStreaming;
  if (method->client_streaming()) return Kind::kClientStreaming;
  if (method->server_streaming()) return Kind::kServerStreaming;
  return Kind::kUnary;
}

// An async stub's answer to a request protobuf cannot serialize (over
// 2 GiB): the call ends INVALID_ARGUMENT, through `done`, never inside the
// stub (after "    return ").
constexpr char kFailAsyncOverTwoGiB[] =
    "ipcrpc_channel_->FailCallAsync(\n"
    "        ::absl::InvalidArgumentError(\n"
    "            \"$full_method$: the request is over the 2 GiB protobuf serializes\"),\n"
    "        [done = ::std::move(done)](::absl::StatusOr<::std::string> failed) mutable {\n"
    "          ::std::move(done)(::std::move(failed).status());\n"
    "        });\n";

// The stub's methods for a streaming RPC: thin, over the channel's untyped
// streams and the typed wrappers of ipcrpc/stream.h.
void PrintStreamStub(Printer& p, const Vars& m, Kind kind) {
  switch (kind) {
    case Kind::kServerStreaming:
      p.Print(m,
              "\n"
              "::ipcrpc::ClientReader<$reply$> $service$::Stub::$method$(\n"
              "    const $request$& request, const ::ipcrpc::CallOptions& options) {\n"
              "  ::std::string request_bytes;\n"
              "  if (!request.SerializePartialToString(&request_bytes)) {\n"
              "    return ::ipcrpc::ClientReader<$reply$>(::absl::InvalidArgumentError(\n"
              "        \"$full_method$: the request is over the 2 GiB protobuf serializes\"));\n"
              "  }\n"
              "  return ::ipcrpc::ClientReader<$reply$>(\n"
              "      ipcrpc_channel_->OpenServerStream(\"$full_method$\", request_bytes, options));\n"
              "}\n"
              "\n"
              "::ipcrpc::Call $service$::Stub::$method$Async(\n"
              "    const $request$& request, const ::ipcrpc::CallOptions& options,\n"
              "    ::absl::AnyInvocable<void(const $reply$&)> on_message,\n"
              "    ::absl::AnyInvocable<void(::absl::Status) &&> done) {\n"
              "  ::std::string request_bytes;\n"
              "  if (!request.SerializePartialToString(&request_bytes)) {\n"
              "    return ");
      p.Print(m, kFailAsyncOverTwoGiB);
      p.Print(m,
              "  }\n"
              "  // A message that does not parse is skipped, and the call then ends\n"
              "  // INTERNAL whatever the server says.\n"
              "  auto parse_failed = ::std::make_shared<bool>(false);\n"
              "  return ipcrpc_channel_->CallServerStreamAsync(\n"
              "      \"$full_method$\", request_bytes, options,\n"
              "      [on_message = ::std::move(on_message), parse_failed](\n"
              "          ::std::string_view message_bytes) mutable {\n"
              "        $reply$ message;\n"
              "        if (*parse_failed || !::ipcrpc::ParseFromBytes(message_bytes, &message)) {\n"
              "          *parse_failed = true;\n"
              "          return;\n"
              "        }\n"
              "        on_message(message);\n"
              "      },\n"
              "      [done = ::std::move(done), parse_failed](::absl::Status status) mutable {\n"
              "        if (*parse_failed) {\n"
              "          status = ::absl::InternalError(\n"
              "              \"$full_method$: a stream message does not parse as $reply_name$\");\n"
              "        }\n"
              "        ::std::move(done)(::std::move(status));\n"
              "      });\n"
              "}\n");
      break;
    case Kind::kClientStreaming:
      p.Print(m,
              "\n"
              "::ipcrpc::ClientWriter<$request$, $reply$> $service$::Stub::$method$(\n"
              "    const ::ipcrpc::CallOptions& options) {\n"
              "  return ::ipcrpc::ClientWriter<$request$, $reply$>(\n"
              "      ipcrpc_channel_->OpenStream(\"$full_method$\", options));\n"
              "}\n");
      break;
    case Kind::kBidiStreaming:
      p.Print(m,
              "\n"
              "::ipcrpc::ClientReaderWriter<$request$, $reply$> $service$::Stub::$method$(\n"
              "    const ::ipcrpc::CallOptions& options) {\n"
              "  return ::ipcrpc::ClientReaderWriter<$request$, $reply$>(\n"
              "      ipcrpc_channel_->OpenStream(\"$full_method$\", options));\n"
              "}\n");
      break;
    case Kind::kUnary:
      break;
  }
}

// The registration of a streaming RPC's handler in the Service's constructor.
void PrintStreamRegistration(Printer& p, const Vars& m, Kind kind) {
  switch (kind) {
    case Kind::kServerStreaming:
      p.Print(m,
              "  ::ipcrpc::Service::AddStreamMethod(\"$full_method$\",\n"
              "      ::ipcrpc::MethodKind::kServerStreaming,\n"
              "      [this](::ipcrpc::ServerContext& context,\n"
              "             ::ipcrpc::GenericServerStream& stream) -> ::absl::Status {\n"
              "        ::std::string request_bytes;\n"
              "        if (!stream.Read(&request_bytes)) {\n"
              "          return ::absl::CancelledError(\"$full_method$: no request\");\n"
              "        }\n"
              "        $request$ request;\n"
              "        if (!request.ParseFromString(request_bytes)) {\n"
              "          return ::absl::InvalidArgumentError(\n"
              "              \"$full_method$: the request does not parse as $request_name$\");\n"
              "        }\n"
              "        ::ipcrpc::ServerWriter<$reply$> writer(stream);\n"
              "        return this->$method$(context, request, writer);\n"
              "      });\n");
      break;
    case Kind::kClientStreaming:
      p.Print(m,
              "  ::ipcrpc::Service::AddStreamMethod(\"$full_method$\",\n"
              "      ::ipcrpc::MethodKind::kClientStreaming,\n"
              "      [this](::ipcrpc::ServerContext& context,\n"
              "             ::ipcrpc::GenericServerStream& stream) -> ::absl::Status {\n"
              "        ::ipcrpc::ServerReader<$request$> reader(stream);\n"
              "        $reply$ reply;\n"
              "        ::absl::Status status = this->$method$(context, reader, reply);\n"
              "        if (!status.ok()) return status;\n"
              "        ::std::string reply_bytes;\n"
              "        if (!::ipcrpc::SerializeReply(reply, &reply_bytes)) {\n"
              "          return ::absl::InternalError(\n"
              "              \"$full_method$: the handler's reply cannot be serialized \"\n"
              "              \"(required fields missing, or over 2 GiB)\");\n"
              "        }\n"
              "        stream.Write(reply_bytes);\n"
              "        return status;\n"
              "      });\n");
      break;
    case Kind::kBidiStreaming:
      p.Print(m,
              "  ::ipcrpc::Service::AddStreamMethod(\"$full_method$\",\n"
              "      ::ipcrpc::MethodKind::kBidiStreaming,\n"
              "      [this](::ipcrpc::ServerContext& context,\n"
              "             ::ipcrpc::GenericServerStream& stream) -> ::absl::Status {\n"
              "        ::ipcrpc::ServerReaderWriter<$reply$, $request$> reader_writer(stream);\n"
              "        return this->$method$(context, reader_writer);\n"
              "      });\n");
      break;
    case Kind::kUnary:
      break;
  }
}

// ------------------------------------------------------------------ header

void PrintServiceDeclaration(Printer& p, const ServiceDescriptor* service) {
  Vars vars = {{"service", CppIdentifier(service->name())}, {"full_name", service->full_name()}};
  p.PrintRaw(CommentsOf(service, ""));
  p.Print(vars,
          "class $service$ final {\n"
          " public:\n"
          "  static constexpr char kServiceName[] = \"$full_name$\";\n"
          "\n"
          "  // Client side: one method per RPC, sync and async, over a channel.\n"
          "  class Stub {\n"
          "   public:\n"
          "    explicit Stub(::std::shared_ptr<::ipcrpc::Channel> channel);\n");
  for (int i = 0; i < service->method_count(); ++i) {
    const MethodDescriptor* method = service->method(i);
    Vars m = MethodVars(service, method);
    p.Print("\n");
    p.PrintRaw(CommentsOf(method, "    "));
    switch (KindOf(method)) {
      case Kind::kUnary:
        p.Print(m,
                "    ::absl::StatusOr<$reply$> $method$(const $request$& request,\n"
                "        const ::ipcrpc::CallOptions& options = {});\n"
                "    ::ipcrpc::Call $method$Async(const $request$& request,\n"
                "        const ::ipcrpc::CallOptions& options,\n"
                "        ::absl::AnyInvocable<void(::absl::StatusOr<$reply$>) &&> done);\n");
        break;
      case Kind::kServerStreaming:
        p.Print(m,
                "    ::ipcrpc::ClientReader<$reply$> $method$(const $request$& request,\n"
                "        const ::ipcrpc::CallOptions& options = {});\n"
                "    // on_message runs on the channel's response thread, once per message, in\n"
                "    // order; done runs once, last, with the call's final status.\n"
                "    ::ipcrpc::Call $method$Async(const $request$& request,\n"
                "        const ::ipcrpc::CallOptions& options,\n"
                "        ::absl::AnyInvocable<void(const $reply$&)> on_message,\n"
                "        ::absl::AnyInvocable<void(::absl::Status) &&> done);\n");
        break;
      case Kind::kClientStreaming:
        p.Print(m,
                "    ::ipcrpc::ClientWriter<$request$, $reply$> $method$(\n"
                "        const ::ipcrpc::CallOptions& options = {});\n");
        break;
      case Kind::kBidiStreaming:
        p.Print(m,
                "    ::ipcrpc::ClientReaderWriter<$request$, $reply$> $method$(\n"
                "        const ::ipcrpc::CallOptions& options = {});\n");
        break;
    }
  }
  p.Print(
      "\n"
      "   private:\n"
      "    ::std::shared_ptr<::ipcrpc::Channel> ipcrpc_channel_;\n"
      "  };\n"
      "\n"
      "  // Server side: override the methods; each defaults to UNIMPLEMENTED.\n"
      "  class Service : public ::ipcrpc::Service {\n"
      "   public:\n"
      "    Service();\n"
      "    ~Service() override = default;\n");
  for (int i = 0; i < service->method_count(); ++i) {
    const MethodDescriptor* method = service->method(i);
    Vars m = MethodVars(service, method);
    p.Print("\n");
    p.PrintRaw(CommentsOf(method, "    "));
    p.Print(m, "    virtual ::absl::Status $method$(::ipcrpc::ServerContext& context,\n");
    switch (KindOf(method)) {
      case Kind::kUnary:
        p.Print(m, "        const $request$& request, $reply$& reply);\n");
        break;
      case Kind::kServerStreaming:
        p.Print(m,
                "        const $request$& request, ::ipcrpc::ServerWriter<$reply$>& writer);\n");
        break;
      case Kind::kClientStreaming:
        p.Print(m, "        ::ipcrpc::ServerReader<$request$>& reader, $reply$& reply);\n");
        break;
      case Kind::kBidiStreaming:
        p.Print(m, "        ::ipcrpc::ServerReaderWriter<$reply$, $request$>& stream);\n");
        break;
    }
  }
  p.Print(
      "  };\n"
      "};\n");
}

std::string GenerateHeader(const FileDescriptor* file, const std::string& include_prefix) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    Printer p(&stream, '$');
    Vars vars = {{"file", file->name()},
                 {"guard", HeaderGuard(file->name())},
                 {"pb_h", include_prefix + StripProto(file->name()) + ".pb.h"}};
    p.Print(vars,
            "// Generated by protoc-gen-ipcrpc from $file$. DO NOT EDIT.\n"
            "#ifndef $guard$\n"
            "#define $guard$\n"
            "\n"
            "#include <memory>\n"
            "#include <string>\n"
            "\n"
            "#include \"absl/functional/any_invocable.h\"\n"
            "#include \"absl/status/status.h\"\n"
            "#include \"absl/status/statusor.h\"\n"
            "#include \"ipcrpc/ipcrpc.h\"\n"
            "#include \"$pb_h$\"\n"
            "\n");
    OpenNamespaces(p, file->package());
    for (int i = 0; i < file->service_count(); ++i) {
      p.Print("\n");
      PrintServiceDeclaration(p, file->service(i));
    }
    p.Print("\n");
    CloseNamespaces(p, file->package());
    p.Print(vars, "\n#endif  // $guard$\n");
  }
  return out;
}

// ---------------------------------------------------------------- source

void PrintServiceDefinition(Printer& p, const ServiceDescriptor* service) {
  Vars vars = {{"service", CppIdentifier(service->name())}};
  p.Print(vars,
          "// $service$::Stub\n"
          "\n"
          "$service$::Stub::Stub(::std::shared_ptr<::ipcrpc::Channel> channel)\n"
          "    : ipcrpc_channel_(::std::move(channel)) {}\n");
  for (int i = 0; i < service->method_count(); ++i) {
    Vars m = MethodVars(service, service->method(i));
    if (KindOf(service->method(i)) != Kind::kUnary) {
      PrintStreamStub(p, m, KindOf(service->method(i)));
      continue;
    }
    // The request is serialized even if a proto2 required field is missing:
    // the server's parse then answers INVALID_ARGUMENT, the documented code.
    p.Print(m,
            "\n"
            "::absl::StatusOr<$reply$> $service$::Stub::$method$(\n"
            "    const $request$& request, const ::ipcrpc::CallOptions& options) {\n"
            "  // Serialized by the channel: a small request into this thread's\n"
            "  // kept buffer, a large one where the transport says (straight into\n"
            "  // an shm: ring).\n"
            "  const ::ipcrpc::internal::MessageBody<$request$> request_body(request);\n"
            "  if (request_body.too_large()) {\n"
            "    return ::absl::InvalidArgumentError(\n"
            "        \"$full_method$: the request is over the 2 GiB protobuf serializes\");\n"
            "  }\n"
            "  // The response is parsed from the transport's own copy.\n"
            "  $reply$ reply;\n"
            "  bool parsed = false;\n"
            "  ::absl::Status status = ipcrpc_channel_->CallMethodView(\n"
            "      \"$full_method$\", request_body,\n"
            "      [&reply, &parsed](::std::string_view bytes) {\n"
            "        parsed = ::ipcrpc::ParseFromBytes(bytes, &reply);\n"
            "      },\n"
            "      options);\n"
            "  if (!status.ok()) return status;\n"
            "  if (!parsed) {\n"
            "    return ::absl::InternalError(\n"
            "        \"$full_method$: the response does not parse as $reply_name$\");\n"
            "  }\n"
            "  return reply;\n"
            "}\n"
            "\n"
            "::ipcrpc::Call $service$::Stub::$method$Async(\n"
            "    const $request$& request, const ::ipcrpc::CallOptions& options,\n"
            "    ::absl::AnyInvocable<void(::absl::StatusOr<$reply$>) &&> done) {\n"
            "  ::std::string request_buffer;\n"
            "  const ::std::string_view request_bytes =\n"
            "      ::ipcrpc::SerializeAfterHeadroom(request, &request_buffer);\n"
            "  if (request_bytes.data() == nullptr) {\n"
            "    return ");
  p.Print(m, kFailAsyncOverTwoGiB);
  p.Print(m,
            "  }\n"
            "  return ipcrpc_channel_->CallMethodAsync(\n"
            "      \"$full_method$\", request_bytes, options,\n"
            "      [done = ::std::move(done)](::absl::StatusOr<::std::string> response_bytes) mutable {\n"
            "        if (!response_bytes.ok()) {\n"
            "          ::std::move(done)(::std::move(response_bytes).status());\n"
            "          return;\n"
            "        }\n"
            "        $reply$ reply;\n"
            "        if (!reply.ParseFromString(*response_bytes)) {\n"
            "          ::std::move(done)(::absl::InternalError(\n"
            "              \"$full_method$: the response does not parse as $reply_name$\"));\n"
            "          return;\n"
            "        }\n"
            "        ::std::move(done)(::std::move(reply));\n"
            "      });\n"
            "}\n");
  }
  p.Print(vars,
          "\n"
          "// $service$::Service\n"
          "\n"
          "$service$::Service::Service() {\n");
  for (int i = 0; i < service->method_count(); ++i) {
    Vars m = MethodVars(service, service->method(i));
    if (KindOf(service->method(i)) != Kind::kUnary) {
      PrintStreamRegistration(p, m, KindOf(service->method(i)));
      continue;
    }
    // Qualified, so that an RPC called AddMethod cannot hide it.
    p.Print(m,
            "  ::ipcrpc::Service::AddMethod(\"$full_method$\",\n"
            "      [this](::ipcrpc::ServerContext& context, ::std::string_view request_bytes,\n"
            "             ::std::string& response_bytes) -> ::absl::Status {\n");
    const Descriptor* output = service->method(i)->output_type();
    const bool reuse_request = Reusable(service->method(i)->input_type());
    const bool reuse_reply = Reusable(output);
    if (reuse_request) {
      p.Print(m,
              "        // The thread's $request_name$ from its last call, cleared\n"
              "        // (ipcrpc/message_body.h).\n"
              "        ::ipcrpc::internal::ReusedMessage<$request$, 0> request_slot;\n"
              "        $request$& request = *request_slot;\n");
    } else {
      p.Print(m, "        $request$ request;\n");
    }
    p.Print(m,
            "        if (!::ipcrpc::ParseFromBytes(request_bytes, &request)) {\n"
            "          return ::absl::InvalidArgumentError(\n"
            "              \"$full_method$: the request does not parse as $request_name$\");\n"
            "        }\n");
    if (reuse_request) {
      p.Print(m,
              "        request_slot.KeepIf(\n"
              "            request_bytes.size() <= ::ipcrpc::internal::kReuseMaxBytes);\n");
    }
    if (reuse_reply) {
      p.Print(m,
              "        ::ipcrpc::internal::ReusedMessage<$reply$, 1> reply_slot;\n"
              "        $reply$& reply = *reply_slot;\n");
    } else {
      p.Print(m, "        $reply$ reply;\n");
    }
    p.Print(m,
            "        ::absl::Status status = this->$method$(context, request, reply);\n"
            "        // A large reply is sent from here, serialized straight into\n"
            "        // the transport, and the call ends.\n"
            "        if (status.ok() && !::ipcrpc::internal::SendReply(reply, &response_bytes)) {\n"
            "          return ::absl::InternalError(\n"
            "              \"$full_method$: the handler's reply cannot be serialized \"\n"
            "              \"(required fields missing, or over 2 GiB)\");\n"
            "        }\n");
    if (reuse_reply) {
      Vars kept = m;
      kept["capacities"] = StringCapacities(output, "reply");
      p.Print(kept,
              "        // Serialized, so its size is cached.\n"
              "        reply_slot.KeepIf(status.ok() && ::ipcrpc::internal::SmallEnoughToKeep(\n"
              "                                             reply.GetCachedSize(), {$capacities$}));\n");
    }
    p.Print("        return status;\n"
            "      });\n");
  }
  p.Print("}\n");
  for (int i = 0; i < service->method_count(); ++i) {
    Vars m = MethodVars(service, service->method(i));
    p.Print(m, "\n::absl::Status $service$::Service::$method$(::ipcrpc::ServerContext&,\n");
    switch (KindOf(service->method(i))) {
      case Kind::kUnary:
        p.Print(m, "    const $request$&, $reply$&) {\n");
        break;
      case Kind::kServerStreaming:
        p.Print(m, "    const $request$&, ::ipcrpc::ServerWriter<$reply$>&) {\n");
        break;
      case Kind::kClientStreaming:
        p.Print(m, "    ::ipcrpc::ServerReader<$request$>&, $reply$&) {\n");
        break;
      case Kind::kBidiStreaming:
        p.Print(m, "    ::ipcrpc::ServerReaderWriter<$reply$, $request$>&) {\n");
        break;
    }
    p.Print(m,
            "  return ::absl::UnimplementedError(\"$full_method$ is not implemented\");\n"
            "}\n");
  }
}

std::string GenerateSource(const FileDescriptor* file, const std::string& include_prefix) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    Printer p(&stream, '$');
    Vars vars = {{"file", file->name()},
                 {"ipcrpc_h", include_prefix + StripProto(file->name()) + ".ipcrpc.h"}};
    p.Print(vars,
            "// Generated by protoc-gen-ipcrpc from $file$. DO NOT EDIT.\n"
            "#include \"$ipcrpc_h$\"\n"
            "\n"
            "#include <memory>\n"
            "#include <string>\n"
            "#include <string_view>\n"
            "#include <utility>\n"
            "\n"
            "#include \"ipcrpc/message_body.h\"\n"
            "\n");
    OpenNamespaces(p, file->package());
    for (int i = 0; i < file->service_count(); ++i) {
      p.Print("\n");
      PrintServiceDefinition(p, file->service(i));
    }
    p.Print("\n");
    CloseNamespaces(p, file->package());
  }
  return out;
}

bool WriteFile(google::protobuf::compiler::GeneratorContext* context, const std::string& name,
               const std::string& contents) {
  std::unique_ptr<google::protobuf::io::ZeroCopyOutputStream> output(context->Open(name));
  google::protobuf::io::Printer p(output.get(), '$');
  p.PrintRaw(contents);
  return !p.failed();
}

}  // namespace

std::string CppIdentifier(const std::string& name) {
  return Reserved().count(name) ? name + "_" : name;
}

bool IpcrpcGenerator::Generate(const FileDescriptor* file, const std::string& parameter,
                               google::protobuf::compiler::GeneratorContext* context,
                               std::string* error) const {
  std::vector<std::pair<std::string, std::string>> options;
  google::protobuf::compiler::ParseGeneratorParameter(parameter, &options);
  std::string include_prefix;
  for (const auto& [key, value] : options) {
    if (key == "include_prefix") {
      include_prefix = value;
      if (!include_prefix.empty() && include_prefix.back() != '/') include_prefix += "/";
    } else {
      *error = "protoc-gen-ipcrpc: unknown parameter '" + key +
               "' (known: include_prefix=DIR)";
      return false;
    }
  }
  // Files are written even for a .proto without services (they then only
  // include its .pb.h), so that build rules can name their outputs up front.
  const std::string base = StripProto(file->name());
  if (!WriteFile(context, base + ".ipcrpc.h", GenerateHeader(file, include_prefix)) ||
      !WriteFile(context, base + ".ipcrpc.cc", GenerateSource(file, include_prefix))) {
    *error = "cannot write the generated files";  // protoc names the file
    return false;
  }
  return true;
}

}  // namespace ipcrpc::codegen
