// ipcrpc: list, inspect, call and clean up ipcrpc servers.
//
//   ipcrpc ls [--json]                       live servers of this user
//   ipcrpc stats ENDPOINT [--json]           counters, connections, calls in flight
//   ipcrpc call ENDPOINT pkg.Service/Method [JSON|-] [--timeout=5s] [--metadata=k=v]...
//               [--proto=FILE]... [--import_path=DIR]...
//   ipcrpc gc [--dry-run]                    remove what dead servers and clients left
//
// `call` learns the method's messages from the server: its ipcrpc.Reflection
// or, over grpc: from a plain gRPC server, gRPC's standard server
// reflection; --proto files replace both.
//
// Exit code: 0 on success; the status code of a failed call or check
// (UNAVAILABLE = 14, NOT_FOUND = 5, INVALID_ARGUMENT = 3, ...); 64 for a
// command line that makes no sense. Errors are one line on stderr (a failed
// call's status payloads on it too); the response metadata a server sent are
// on stderr before it, a line each ("response metadata KEY: VALUE").
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <deque>
#include <iostream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/escaping.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "google/protobuf/compiler/importer.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/descriptor_database.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/wire_format_lite.h"
#include "ipcrpc/introspection.pb.h"
#include "ipcrpc/ipcrpc.h"
#include "base/syscall.h"
#include "rpc/server_registry.h"
#include "transports/leftovers.h"

namespace ipcrpc::cli {
namespace {

namespace pb = google::protobuf;
using internal::ReadRegistry;
using internal::RegistryListing;

constexpr int kUsageError = 64;

constexpr char kUsage[] = R"(usage:
  ipcrpc ls [--json]
  ipcrpc stats ENDPOINT [--json] [--timeout=DURATION]
  ipcrpc call ENDPOINT pkg.Service/Method [JSON | -] [--timeout=DURATION]
              [--metadata=KEY=VALUE]... [--proto=FILE]... [--import_path=DIR]...
      (streams: messages from the server print one JSON object per line as
       they arrive; a client or bidirectional stream reads its messages as
       JSON lines from stdin, or from the JSON argument; no deadline unless
       --timeout is given)
  ipcrpc gc [--dry-run]
)";

// A failure: a one-line message and the exit code.
struct Failure {
  int code;
  std::string message;
};

Failure FromStatus(const absl::Status& status, const std::string& context = "") {
  std::string message(status.message());
  if (!context.empty() && !absl::StartsWith(message, context)) {
    message = absl::StrCat(context, ": ", message);
  }
  // One line, whatever the status held.
  for (char& c : message) {
    if (c == '\n') c = ' ';
  }
  return Failure{static_cast<int>(status.code()), std::move(message)};
}

Failure Usage(std::string message) { return Failure{kUsageError, std::move(message)}; }

struct Args {
  std::string command;
  std::vector<std::string> positional;
  bool json = false;
  bool dry_run = false;
  absl::Duration timeout = absl::Seconds(5);
  bool timeout_given = false;  // streams have no deadline unless one is given
  std::vector<std::pair<std::string, std::string>> metadata;
  std::vector<std::string> protos;
  std::vector<std::string> import_paths;
};

std::optional<Failure> ParseArgs(int argc, char** argv, Args* args) {
  std::vector<std::string> words(argv + 1, argv + argc);
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& word = words[i];
    if (word == "-" || !absl::StartsWith(word, "-")) {
      if (args->command.empty()) {
        args->command = word;
      } else {
        args->positional.push_back(word);
      }
      continue;
    }
    std::string name = word;
    std::optional<std::string> value;
    if (size_t eq = word.find('='); eq != std::string::npos) {
      name = word.substr(0, eq);
      value = word.substr(eq + 1);
    }
    auto take_value = [&]() -> std::optional<std::string> {
      if (value.has_value()) return value;
      if (i + 1 < words.size()) return words[++i];
      return std::nullopt;
    };
    if (name == "--json" || name == "--dry-run" || name == "--dry_run") {
      if (value.has_value()) return Usage(absl::StrCat(name, " takes no value"));
      (name == "--json" ? args->json : args->dry_run) = true;
    } else if (name == "--timeout") {
      std::optional<std::string> text = take_value();
      if (!text.has_value() || !absl::ParseDuration(*text, &args->timeout) ||
          args->timeout <= absl::ZeroDuration()) {
        return Usage(absl::StrCat("--timeout: '", text.value_or(""),
                                  "' is not a positive duration (e.g. 500ms, 2s)"));
      }
      args->timeout_given = true;
    } else if (name == "--metadata") {
      std::optional<std::string> pair = take_value();
      size_t eq = pair.has_value() ? pair->find('=') : std::string::npos;
      if (eq == std::string::npos || eq == 0) {
        return Usage(absl::StrCat("--metadata: '", pair.value_or(""), "' is not KEY=VALUE"));
      }
      args->metadata.emplace_back(pair->substr(0, eq), pair->substr(eq + 1));
    } else if (name == "--proto") {
      std::optional<std::string> file = take_value();
      if (!file.has_value() || file->empty()) return Usage("--proto needs a FILE");
      args->protos.push_back(*file);
    } else if (name == "--import_path" || name == "-I") {
      std::optional<std::string> dir = take_value();
      if (!dir.has_value() || dir->empty()) return Usage(absl::StrCat(name, " needs a DIR"));
      args->import_paths.push_back(*dir);
    } else if (name == "--help" || name == "-h") {
      args->command = "help";
    } else {
      return Usage(absl::StrCat("unknown option ", name));
    }
  }
  return std::nullopt;
}

std::string FormatUnixMs(int64_t ms) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(ms), absl::LocalTimeZone());
}

std::string ToJson(const pb::Message& message, bool pretty = true) {
  std::string json;
  pb::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  options.preserve_proto_field_names = true;
  if (!pb::util::MessageToJsonString(message, &json, options).ok()) return "{}";
  while (!json.empty() && json.back() == '\n') json.pop_back();
  return json;
}

// ---------------------------------------------------------------------- ls

std::optional<Failure> RunLs(const Args& args) {
  if (!args.positional.empty()) return Usage("ls takes no arguments");
  absl::StatusOr<std::vector<RegistryListing>> listings = ReadRegistry();
  if (!listings.ok()) return FromStatus(listings.status(), "ls: the server registry");
  std::vector<const RegistryListing*> live;
  int stale = 0;
  for (const RegistryListing& listing : *listings) {
    if (listing.live) {
      live.push_back(&listing);
    } else {
      ++stale;
    }
  }
  if (args.json) {
    std::vector<std::string> records;
    for (const RegistryListing* listing : live) records.push_back(ToJson(listing->record, false));
    std::cout << "{\"servers\":[" << absl::StrJoin(records, ",") << "]}\n";
  } else {
    std::cout << absl::StrFormat("%-8s %-6s %-19s %-16s %-40s %s\n", "PID", "UID", "STARTED",
                                 "PROGRAM", "ENDPOINTS", "SERVICES");
    for (const RegistryListing* listing : live) {
      const ServerRecord& r = listing->record;
      std::cout << absl::StrFormat(
          "%-8d %-6d %-19s %-16s %-40s %s\n", r.pid(), r.uid(), FormatUnixMs(r.started_unix_ms()),
          r.program(), r.endpoints().empty() ? "-" : absl::StrJoin(r.endpoints(), ","),
          absl::StrJoin(r.services(), ","));
    }
  }
  if (stale > 0) {
    std::cerr << "ipcrpc ls: " << stale << " stale record" << (stale == 1 ? "" : "s")
              << " of dead servers (ipcrpc gc removes them)\n";
  }
  return std::nullopt;
}

// ------------------------------------------------------------------- stats

std::optional<Failure> RunStats(const Args& args) {
  if (args.positional.size() != 1) return Usage("stats takes one ENDPOINT");
  const std::string& endpoint = args.positional[0];
  absl::StatusOr<std::shared_ptr<Channel>> channel = Channel::Connect(endpoint);
  if (!channel.ok()) return FromStatus(channel.status(), endpoint);
  CallOptions options;
  options.timeout = args.timeout;
  absl::StatusOr<std::string> bytes = (*channel)->CallMethod(
      "ipcrpc.Introspection/GetStats", GetStatsRequest().SerializeAsString(), options);
  if (!bytes.ok()) {
    return FromStatus(bytes.status(),
                      absl::IsUnimplemented(bytes.status())
                          ? absl::StrCat(endpoint, ": introspection is off on this server")
                          : endpoint);
  }
  ServerStats stats;
  if (!stats.ParseFromString(*bytes)) {
    return Failure{static_cast<int>(absl::StatusCode::kDataLoss),
                   absl::StrCat(endpoint, ": the server's GetStats response does not parse")};
  }
  if (args.json) {
    std::cout << ToJson(stats) << "\n";
    return std::nullopt;
  }
  std::cout << absl::StrFormat(
      "uptime %.1fs\ncalls: received %d, in flight %d (queued %d), handled %d, rejected %d\n",
      stats.uptime_ms() / 1000.0, stats.calls_received(), stats.calls_in_flight(),
      stats.calls_queued(), stats.calls_handled(), stats.calls_rejected());
  std::vector<std::string> codes;
  for (const auto& [code, n] : stats.responses_by_code()) codes.push_back(absl::StrCat(code, " ", n));
  std::sort(codes.begin(), codes.end());
  std::cout << "responses: " << (codes.empty() ? "none" : absl::StrJoin(codes, ", "))
            << "; dropped (client gone or cancelled) " << stats.responses_dropped() << "\n";
  std::cout << absl::StrFormat("bytes: received %d, sent %d\n", stats.bytes_received(),
                               stats.bytes_sent());
  std::cout << absl::StrFormat("connections: %d open, %d accepted, %d refused\n",
                               stats.connections_size(), stats.connections_accepted(),
                               stats.connections_refused());
  for (const ConnectionInfo& c : stats.connections()) {
    std::cout << absl::StrFormat("  #%d %s, peer pid %d uid %d, %d calls in flight, open %.1fs\n",
                                 c.id(), c.endpoint(), c.peer_pid(), c.peer_uid(),
                                 c.calls_in_flight(), c.age_ms() / 1000.0);
  }
  std::cout << "calls in flight (streams included):" << (stats.calls().empty() ? " none" : "")
            << "\n";
  for (const CallInfo& call : stats.calls()) {
    std::string deadline =
        call.has_deadline()
            ? absl::StrFormat("deadline in %.3fs", call.deadline_remaining_us() / 1e6)
            : "no deadline";
    std::cout << absl::StrFormat("  conn #%d id %d %s age %.3fs, %s%s\n", call.connection_id(),
                                 call.request_id(), call.method(), call.age_us() / 1e6, deadline,
                                 call.cancelled() ? ", cancelled" : "");
    if (call.has_stream()) {
      const StreamInfo& stream = call.stream();
      std::cout << absl::StrFormat(
          "    stream: %d received (%d bytes unread)%s, %d sent; window left: send %d, "
          "receive %d%s\n",
          stream.messages_received(), stream.unread_bytes(),
          stream.client_half_closed() ? ", client done" : "", stream.messages_sent(),
          stream.send_window_left(), stream.receive_window_left(),
          stream.send_window_left() <= 0 ? " (waiting for the client to read)" : "");
    }
  }
  return std::nullopt;
}

// -------------------------------------------------------------------- call

// Collects protoc's complaints about --proto files, for one line.
class ImportErrors final : public pb::compiler::MultiFileErrorCollector {
 public:
  void AddError(const std::string& filename, int line, int column,
                const std::string& message) override {
    if (!first.empty()) return;
    first = absl::StrCat(filename, ":", line + 1, ":", column + 1, ": ", message);
  }
  std::string first;
};

// Where the method's descriptors come from: the server's reflection
// (ipcrpc's, or over grpc: gRPC's standard server reflection), or --proto
// files.
struct Schema {
  pb::SimpleDescriptorDatabase database;
  std::unique_ptr<pb::DescriptorPool> pool;
  // --proto:
  std::unique_ptr<pb::compiler::DiskSourceTree> tree;
  std::unique_ptr<ImportErrors> errors;
  std::unique_ptr<pb::compiler::Importer> importer;
};

// ------------------------------------------------- gRPC server reflection
// A plain gRPC server (not ipcrpc) describes its services through gRPC's
// standard reflection service: one bidirectional stream on which each
// request gets one response. Its few messages are coded here by hand, as
// wire/status_details.cc codes google.rpc.Status: nothing is vendored, and
// the tool needs neither gRPC's headers nor its reflection library.
// grpc/reflection/v1alpha/reflection.proto:
//   ServerReflectionRequest { string host = 1; oneof { string file_by_filename = 3;
//       string file_containing_symbol = 4; ... } }
//   ServerReflectionResponse { string valid_host = 1; ServerReflectionRequest
//       original_request = 2; oneof { FileDescriptorResponse file_descriptor_response = 4;
//       ... = 5; ... = 6; ErrorResponse error_response = 7; } }
//   FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
//   ErrorResponse { int32 error_code = 1; string error_message = 2; }

using pb::internal::WireFormatLite;

constexpr char kGrpcReflectionMethod[] =
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
// What one schema may take from gRPC server reflection: a hostile or broken
// server cannot make the tool hold, or ask for, ever more (each question is
// for a file not yet sent, and must bring it).
constexpr size_t kMaxReflectionFiles = 1000;
constexpr size_t kMaxReflectionBytes = 64u << 20;

// Field tags: (number << 3) | wire type (0 varint, 2 length-delimited).
constexpr uint32_t kFileByFilenameTag = (3 << 3) | 2;
constexpr uint32_t kFileContainingSymbolTag = (4 << 3) | 2;
constexpr uint32_t kFileDescriptorProtoTag = (1 << 3) | 2;
constexpr uint32_t kErrorCodeTag = (1 << 3) | 0;
constexpr uint32_t kErrorMessageTag = (2 << 3) | 2;
// The response's oneof: its members are fields 4 to 7.
constexpr int kFileDescriptorResponseField = 4;
constexpr int kErrorResponseField = 7;
constexpr int kFirstAnswerField = 4;
constexpr int kLastAnswerField = 7;

std::string EncodeReflectionRequest(uint32_t tag, const std::string& value) {
  std::string encoded;
  {
    pb::io::StringOutputStream stream(&encoded);
    pb::io::CodedOutputStream out(&stream);
    out.WriteTag(tag);
    out.WriteVarint32(static_cast<uint32_t>(value.size()));
    out.WriteString(value);
  }
  return encoded;
}

bool ReadLengthDelimited(pb::io::CodedInputStream& in, std::string* out) {
  uint32_t size = 0;
  // ReadString reserves no more than what is left of the input.
  return in.ReadVarint32(&size) && size <= INT32_MAX && in.ReadString(out, static_cast<int>(size));
}

struct ReflectionResponse {
  int answer = 0;                  // the oneof member set (its field number); 0: none
  std::vector<std::string> files;  // file_descriptor_response: FileDescriptorProtos
  int32_t error_code = 0;          // error_response
  std::string error_message;
};

// Parses the fields of a nested message (`bytes`) with `field`, which reads
// the field of `tag` (false: not a valid message).
template <class ReadField>
bool ParseNested(const std::string& bytes, ReadField field) {
  pb::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                              static_cast<int>(bytes.size()));
  while (uint32_t tag = in.ReadTag()) {
    if (!field(in, tag)) return false;
  }
  return in.ConsumedEntireMessage();
}

// A ServerReflectionResponse; false if `bytes` are not one.
bool ParseReflectionResponse(const std::string& bytes, ReflectionResponse* response) {
  return ParseNested(bytes, [&](pb::io::CodedInputStream& in, uint32_t tag) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    if (WireFormatLite::GetTagWireType(tag) != WireFormatLite::WIRETYPE_LENGTH_DELIMITED ||
        field < kFirstAnswerField || field > kLastAnswerField) {
      return WireFormatLite::SkipField(&in, tag);  // valid_host, original_request, unknown
    }
    std::string nested;
    if (!ReadLengthDelimited(in, &nested)) return false;
    if (field != response->answer) {
      // As in protobuf, a later member of the oneof replaces an earlier one.
      *response = ReflectionResponse();
      response->answer = field;
    }
    if (field == kFileDescriptorResponseField) {
      return ParseNested(nested, [&](pb::io::CodedInputStream& file_in, uint32_t file_tag) {
        if (file_tag != kFileDescriptorProtoTag) {
          return WireFormatLite::SkipField(&file_in, file_tag);
        }
        response->files.emplace_back();
        return ReadLengthDelimited(file_in, &response->files.back());
      });
    }
    if (field == kErrorResponseField) {
      return ParseNested(nested, [&](pb::io::CodedInputStream& error_in, uint32_t error_tag) {
        if (error_tag == kErrorCodeTag) {
          return WireFormatLite::ReadPrimitive<int32_t, WireFormatLite::TYPE_INT32>(
              &error_in, &response->error_code);
        }
        if (error_tag == kErrorMessageTag) {
          return ReadLengthDelimited(error_in, &response->error_message);
        }
        return WireFormatLite::SkipField(&error_in, error_tag);
      });
    }
    return true;  // list_services and extension numbers: answers to what is never asked
  });
}

// Adds the file that defines `service_name`, and every file it depends on
// (transitively), to `schema->database`, as `endpoint`'s gRPC server
// reflection sends them, by `deadline`.
absl::Status LoadSchemaThroughGrpcReflection(Channel& channel, const std::string& endpoint,
                                             const std::string& service_name, absl::Time deadline,
                                             Schema* schema) {
  const std::string source = absl::StrCat(endpoint, ": gRPC server reflection");
  CallOptions options;
  options.deadline = deadline;
  GenericClientStream stream = channel.OpenStream(kGrpcReflectionMethod, options);
  // The stream ended before answering `question`: why.
  auto ended = [&](const std::string& question) -> absl::Status {
    absl::Status status = stream.Finish();
    if (absl::IsUnimplemented(status)) {
      return absl::FailedPreconditionError(
          absl::StrCat(endpoint,
                       ": the server offers neither ipcrpc.Reflection nor gRPC server "
                       "reflection; pass the service's --proto FILE"));
    }
    if (status.ok()) {
      return absl::DataLossError(
          absl::StrCat(source, " ended its stream without answering ", question));
    }
    return absl::Status(status.code(),
                        absl::StrCat(source, ": ", question, ": ", status.message()));
  };
  std::map<std::string, std::string> received;  // file name: its bytes as first sent
  size_t bytes_received = 0;
  std::deque<std::string> missing;  // dependencies not received yet
  std::set<std::string> listed;     // ... listed once each
  // Asks one question; the files of the answer go into the database.
  auto ask = [&](uint32_t tag, const std::string& value) -> absl::Status {
    const std::string question = absl::StrCat(
        tag == kFileByFilenameTag ? "file_by_filename " : "file_containing_symbol ", value);
    if (!stream.Write(EncodeReflectionRequest(tag, value))) return ended(question);
    std::string bytes;
    if (!stream.Read(&bytes)) return ended(question);
    ReflectionResponse response;
    if (!ParseReflectionResponse(bytes, &response)) {
      return absl::DataLossError(
          absl::StrCat(source, ": the answer to ", question, " does not parse"));
    }
    if (response.answer == kErrorResponseField) {
      const int code = response.error_code;
      const absl::StatusCode status_code =
          code > 0 && code <= 16 ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kUnknown;
      return absl::Status(
          status_code,
          absl::StrCat(source, " answered ", question, " with error ", code, " (",
                       absl::StatusCodeToString(status_code), "): ", response.error_message));
    }
    if (response.answer != kFileDescriptorResponseField) {
      return absl::DataLossError(
          absl::StrCat(source, " answered ", question, " with no file descriptors"));
    }
    for (const std::string& file_bytes : response.files) {
      bytes_received += file_bytes.size();
      if (bytes_received > kMaxReflectionBytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            source, " sent more than ", kMaxReflectionBytes >> 20, " MiB of file descriptors"));
      }
      pb::FileDescriptorProto file;
      if (!file.ParseFromString(file_bytes) || file.name().empty()) {
        return absl::DataLossError(absl::StrCat(source, ": a file descriptor in the answer to ",
                                                question, " does not parse"));
      }
      auto [it, added] = received.try_emplace(file.name(), file_bytes);
      if (!added) {
        // gRPC's reflection sends files again that it sent before: the same
        // bytes are nothing new.
        if (it->second == file_bytes) continue;
        return absl::DataLossError(absl::StrCat(source, " sent a conflicting file ", file.name()));
      }
      if (received.size() > kMaxReflectionFiles) {
        return absl::ResourceExhaustedError(
            absl::StrCat(source, " sent more than ", kMaxReflectionFiles, " files"));
      }
      if (!schema->database.Add(file)) {
        return absl::DataLossError(absl::StrCat(source, " sent a conflicting file ", file.name()));
      }
      for (const std::string& dependency : file.dependency()) {
        if (listed.insert(dependency).second) missing.push_back(dependency);
      }
    }
    return absl::OkStatus();
  };
  if (absl::Status asked = ask(kFileContainingSymbolTag, service_name); !asked.ok()) return asked;
  while (!missing.empty()) {
    const std::string name = std::move(missing.front());
    missing.pop_front();
    if (received.contains(name)) continue;  // it came with another answer
    if (absl::Status asked = ask(kFileByFilenameTag, name); !asked.ok()) return asked;
    if (!received.contains(name)) {
      return absl::DataLossError(
          absl::StrCat(source, " did not send ", name, " when asked file_by_filename ", name));
    }
  }
  // Everything needed has arrived; how the server then ends the stream
  // changes nothing.
  stream.WritesDone();
  stream.Finish().IgnoreError();
  return absl::OkStatus();
}

absl::StatusOr<const pb::DescriptorPool*> LoadSchema(const Args& args, Channel& channel,
                                                     const std::string& endpoint,
                                                     const std::string& service_name,
                                                     Schema* schema) {
  if (!args.protos.empty()) {
    schema->tree = std::make_unique<pb::compiler::DiskSourceTree>();
    schema->errors = std::make_unique<ImportErrors>();
    for (const std::string& dir : args.import_paths) schema->tree->MapPath("", dir);
    for (const std::string& proto : args.protos) {
      const size_t slash = proto.rfind('/');
      schema->tree->MapPath("", slash == std::string::npos ? "." : proto.substr(0, slash));
    }
    schema->tree->MapPath("", "/usr/include");  // protobuf's well-known types
    schema->importer =
        std::make_unique<pb::compiler::Importer>(schema->tree.get(), schema->errors.get());
    for (const std::string& proto : args.protos) {
      std::string virtual_file;
      std::string shadowing;
      if (schema->tree->DiskFileToVirtualFile(proto, &virtual_file, &shadowing) !=
          pb::compiler::DiskSourceTree::SUCCESS) {
        return absl::NotFoundError(absl::StrCat("--proto ", proto, ": cannot read the file"));
      }
      if (schema->importer->Import(virtual_file) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("--proto ", proto, ": ", schema->errors->first));
      }
    }
    return schema->importer->pool();
  }
  // One deadline for the schema, whichever reflection it comes from.
  const absl::Time deadline = absl::Now() + args.timeout;
  CallOptions options;
  options.deadline = deadline;
  absl::StatusOr<std::string> bytes =
      channel.CallMethod("ipcrpc.Reflection/GetFileDescriptorSet",
                         GetFileDescriptorSetRequest().SerializeAsString(), options);
  if (!bytes.ok()) {
    if (absl::IsUnimplemented(bytes.status()) && absl::StartsWith(endpoint, "grpc:")) {
      // Not an ipcrpc server (or its reflection is off): a plain gRPC
      // server may offer gRPC's standard reflection instead.
      absl::Status loaded =
          LoadSchemaThroughGrpcReflection(channel, endpoint, service_name, deadline, schema);
      if (!loaded.ok()) return loaded;
      schema->pool = std::make_unique<pb::DescriptorPool>(&schema->database);
      return schema->pool.get();
    }
    if (absl::IsUnimplemented(bytes.status())) {
      return absl::FailedPreconditionError(absl::StrCat(
          endpoint, ": reflection is off on this server; pass the service's --proto FILE"));
    }
    return absl::Status(bytes.status().code(),
                        absl::StrCat(endpoint, ": reflection: ", bytes.status().message()));
  }
  pb::FileDescriptorSet files;
  if (!files.ParseFromString(*bytes)) {
    return absl::DataLossError(absl::StrCat(endpoint, ": the reflection response does not parse"));
  }
  for (const pb::FileDescriptorProto& file : files.file()) {
    if (!schema->database.Add(file)) {
      return absl::DataLossError(
          absl::StrCat(endpoint, ": reflection sent a conflicting file ", file.name()));
    }
  }
  schema->pool = std::make_unique<pb::DescriptorPool>(&schema->database);
  return schema->pool.get();
}

// The status's payloads, to follow its message on the error line:
// "; detail TYPE_URL: JSON" each if the schema knows the type (e.g.
// google.rpc.ErrorInfo), else its bytes in base64.
std::string DescribePayloads(const absl::Status& status, const pb::DescriptorPool* pool) {
  std::string lines;
  status.ForEachPayload([&](absl::string_view type_url, const absl::Cord& payload) {
    const std::string url(type_url.data(), type_url.size());
    const std::string bytes(payload);
    const std::string type_name = url.substr(url.rfind('/') + 1);
    std::string shown;
    if (const pb::Descriptor* type = pool != nullptr ? pool->FindMessageTypeByName(type_name)
                                                     : nullptr) {
      pb::DynamicMessageFactory factory(pool);
      std::unique_ptr<pb::Message> message(factory.GetPrototype(type)->New());
      if (message->ParseFromString(bytes)) shown = ToJson(*message, false);
    }
    if (shown.empty()) {
      std::string encoded;
      absl::Base64Escape(bytes, &encoded);
      shown = absl::StrCat("(base64) ", encoded);
    }
    absl::StrAppend(&lines, "; detail ", url, ": ", shown);
  });
  return lines;
}

Failure CallFailure(const std::string& method_name, const absl::Status& status,
                    const pb::DescriptorPool* pool = nullptr) {
  return FromStatus(absl::Status(
      status.code(), absl::StrCat(method_name, ": ", absl::StatusCodeToString(status.code()), ": ",
                                  status.message(), DescribePayloads(status, pool))));
}

// The server's response metadata, on stderr (stdout is the response): one
// "response metadata KEY: VALUE" line each, a -bin key's value in base64.
void PrintResponseMetadata(const std::vector<std::pair<std::string, std::string>>& metadata) {
  for (const auto& [key, value] : metadata) {
    std::string shown;
    if (absl::EndsWith(key, "-bin")) {
      absl::Base64Escape(value, &shown);
    } else {
      shown = absl::CHexEscape(value);
    }
    std::cerr << "response metadata " << absl::CHexEscape(key) << ": " << shown << "\n";
  }
}

// A streaming call. Messages to the server are JSON objects, one per line:
// from `input` ("-" or none: stdin, read as the call goes); a
// server-streaming call takes one (the whole input; none: {}, as a unary
// call). Messages from the server are printed as
// they arrive, one JSON object per line. No deadline unless --timeout.
std::optional<Failure> RunStreamCall(const Args& args, Channel& channel,
                                     const std::string& method_name,
                                     const pb::MethodDescriptor* method,
                                     pb::DynamicMessageFactory* factory,
                                     const std::string& input) {
  const pb::Message* request_type = factory->GetPrototype(method->input_type());
  const pb::Message* reply_type = factory->GetPrototype(method->output_type());
  auto parse = [&](const std::string& json, std::string* bytes) -> std::optional<Failure> {
    std::unique_ptr<pb::Message> message(request_type->New());
    if (auto parsed = pb::util::JsonStringToMessage(json, message.get()); !parsed.ok()) {
      std::string why(parsed.message());
      return FromStatus(absl::InvalidArgumentError(
          absl::StrCat(method->client_streaming() ? "a request line" : "the request JSON",
                       " is not a ", method->input_type()->full_name(), ": ", why)));
    }
    *bytes = message->SerializeAsString();
    return std::nullopt;
  };
  CallOptions options;
  if (args.timeout_given) options.timeout = args.timeout;
  options.metadata = args.metadata;
  std::vector<std::pair<std::string, std::string>> response_metadata;
  options.response_metadata = &response_metadata;
  const pb::DescriptorPool* pool = method->file()->pool();
  std::unique_ptr<pb::Message> reply(reply_type->New());
  auto print_all = [&](GenericClientStream& stream) -> std::optional<Failure> {
    std::string bytes;
    while (stream.Read(&bytes)) {
      if (!reply->ParseFromString(bytes)) {
        stream.Cancel();
        return FromStatus(absl::DataLossError(absl::StrCat(
            method_name, ": a stream message is not a ", method->output_type()->full_name())));
      }
      std::cout << ToJson(*reply, false) << std::endl;  // flushed: as it arrives
    }
    return std::nullopt;
  };
  if (!method->client_streaming()) {
    std::string json = input.empty() ? "{}" : input;
    if (json == "-") {
      json.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    }
    std::string request;
    if (auto failed = parse(json, &request)) return failed;
    GenericClientStream stream = channel.OpenServerStream(method_name, request, options);
    if (auto failed = print_all(stream)) return failed;
    absl::Status status = stream.Finish();
    PrintResponseMetadata(response_metadata);
    if (!status.ok()) return CallFailure(method_name, status, pool);
    return std::nullopt;
  }
  GenericClientStream stream = channel.OpenStream(method_name, options);
  // Lines go out as they are read (a writer thread), while replies print.
  // Once the stream has ended, the writer stops waiting for stdin (`stop`).
  int stop_pipe[2];
  if (::pipe2(stop_pipe, O_CLOEXEC) != 0) {
    return FromStatus(absl::InternalError("pipe2 failed"));
  }
  internal::UniqueFd stop_read(stop_pipe[0]);
  internal::UniqueFd stop_write(stop_pipe[1]);
  std::optional<Failure> write_failure;
  std::thread writer([&] {
    // One line: false to stop writing.
    auto send_line = [&](const std::string& line) {
      if (absl::StripAsciiWhitespace(line).empty()) return true;
      std::string bytes;
      if (auto failed = parse(line, &bytes)) {
        write_failure = failed;
        stream.Cancel();
        return false;
      }
      return stream.Write(bytes);  // false: the call ended (Finish says why)
    };
    if (!input.empty() && input != "-") {
      for (const std::string& line : std::vector<std::string>(absl::StrSplit(input, '\n'))) {
        if (!send_line(line)) return;
      }
      stream.WritesDone();
      return;
    }
    std::string pending;
    char buffer[4096];
    for (;;) {
      struct pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {stop_read.get(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents != 0) return;  // the stream ended
      const ssize_t n = ::read(STDIN_FILENO, buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // end of input
      pending.append(buffer, static_cast<size_t>(n));
      size_t newline;
      while ((newline = pending.find('\n')) != std::string::npos) {
        if (!send_line(pending.substr(0, newline))) return;
        pending.erase(0, newline + 1);
      }
    }
    if (!send_line(pending)) return;
    stream.WritesDone();
  });
  std::optional<Failure> read_failure = print_all(stream);
  const char byte = 's';
  [[maybe_unused]] ssize_t ignored = ::write(stop_write.get(), &byte, 1);
  writer.join();
  absl::Status status = stream.Finish();
  PrintResponseMetadata(response_metadata);
  if (write_failure.has_value()) return write_failure;
  if (read_failure.has_value()) return read_failure;
  if (!status.ok()) return CallFailure(method_name, status, pool);
  return std::nullopt;
}

std::optional<Failure> RunCall(const Args& args) {
  if (args.positional.size() < 2 || args.positional.size() > 3) {
    return Usage("call takes ENDPOINT pkg.Service/Method [JSON | -]");
  }
  const std::string& endpoint = args.positional[0];
  const std::string& method_name = args.positional[1];
  std::string json = args.positional.size() == 3 ? args.positional[2] : "{}";
  if (json == "-") {
    json.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  const size_t slash = method_name.rfind('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == method_name.size()) {
    return Usage(absl::StrCat("method '", method_name, "' is not pkg.Service/Method"));
  }
  const std::string service_name = method_name.substr(0, slash);
  const std::string method_short = method_name.substr(slash + 1);

  absl::StatusOr<std::shared_ptr<Channel>> channel = Channel::Connect(endpoint);
  if (!channel.ok()) return FromStatus(channel.status(), endpoint);
  Schema schema;
  absl::StatusOr<const pb::DescriptorPool*> pool =
      LoadSchema(args, **channel, endpoint, service_name, &schema);
  if (!pool.ok()) return FromStatus(pool.status());
  const pb::ServiceDescriptor* service = (*pool)->FindServiceByName(service_name);
  if (service == nullptr) {
    return FromStatus(absl::NotFoundError(absl::StrCat(
        "service ", service_name, " is unknown ",
        args.protos.empty() ? absl::StrCat("to ", endpoint, "'s reflection") : "in the --proto files")));
  }
  const pb::MethodDescriptor* method = service->FindMethodByName(method_short);
  if (method == nullptr) {
    std::vector<std::string> names;
    for (int i = 0; i < service->method_count(); ++i) names.push_back(service->method(i)->name());
    return FromStatus(absl::NotFoundError(absl::StrCat("service ", service_name, " has no method ",
                                                       method_short, " (it has ",
                                                       absl::StrJoin(names, ", "), ")")));
  }
  pb::DynamicMessageFactory factory(*pool);
  if (method->client_streaming() || method->server_streaming()) {
    return RunStreamCall(args, **channel, method_name, method, &factory,
                         args.positional.size() == 3 ? args.positional[2] : "");
  }
  std::unique_ptr<pb::Message> request(factory.GetPrototype(method->input_type())->New());
  std::unique_ptr<pb::Message> response(factory.GetPrototype(method->output_type())->New());
  if (auto parsed = pb::util::JsonStringToMessage(json, request.get()); !parsed.ok()) {
    std::string why(parsed.message());
    return FromStatus(absl::InvalidArgumentError(absl::StrCat(
        "the request JSON is not a ", method->input_type()->full_name(), ": ", why)));
  }
  CallOptions options;
  options.timeout = args.timeout;
  options.metadata = args.metadata;
  std::vector<std::pair<std::string, std::string>> response_metadata;
  options.response_metadata = &response_metadata;
  absl::StatusOr<std::string> bytes =
      (*channel)->CallMethod(method_name, request->SerializeAsString(), options);
  PrintResponseMetadata(response_metadata);
  if (!bytes.ok()) return CallFailure(method_name, bytes.status(), *pool);
  if (!response->ParseFromString(*bytes)) {
    return FromStatus(absl::DataLossError(absl::StrCat(
        method_name, ": the response is not a ", method->output_type()->full_name())));
  }
  std::cout << ToJson(*response) << "\n";
  return std::nullopt;
}

// ---------------------------------------------------------------------- gc

std::optional<Failure> RunGc(const Args& args) {
  if (!args.positional.empty()) return Usage("gc takes no arguments");
  absl::StatusOr<std::vector<RegistryListing>> listings = ReadRegistry();
  if (!listings.ok()) return FromStatus(listings.status(), "gc: the server registry");
  std::vector<internal::StaleObject> stale;
  std::vector<std::string> notes;
  for (const RegistryListing& listing : *listings) {
    if (listing.live) continue;
    // What the dead server's endpoints left, checked one by one: a live
    // server that took an endpoint over since is never touched.
    for (const std::string& endpoint : listing.record.endpoints()) {
      absl::StatusOr<std::optional<internal::StaleObject>> object =
          internal::FindStaleEndpointObject(endpoint);
      if (!object.ok()) {
        notes.push_back(absl::StrCat(endpoint, ": ", object.status().message()));
      } else if (object->has_value()) {
        stale.push_back(std::move(**object));
      }
    }
    internal::StaleObject record;
    record.kind = "registry record";
    record.name = listing.path;
    record.reason = listing.problem.empty()
                        ? absl::StrCat("server pid ", listing.record.pid(), " is gone")
                        : listing.problem;
    record.remove = [path = listing.path]() -> absl::Status {
      if (::unlink(path.c_str()) < 0 && errno != ENOENT) {
        return absl::InternalError(absl::StrCat("unlink ", path, ": ", std::strerror(errno)));
      }
      return absl::OkStatus();
    };
    stale.push_back(std::move(record));
  }
  for (internal::StaleObject& object : internal::FindStaleClientObjects(&notes)) {
    stale.push_back(std::move(object));
  }
  int failures = 0;
  absl::Status last_failure;
  for (internal::StaleObject& object : stale) {
    if (args.dry_run) {
      std::cout << "would remove " << object.kind << " " << object.name << " (" << object.reason
                << ")\n";
      continue;
    }
    absl::Status removed = object.remove();
    if (removed.ok()) {
      std::cout << "removed " << object.kind << " " << object.name << " (" << object.reason
                << ")\n";
    } else {
      ++failures;
      last_failure = removed;
      std::cerr << "ipcrpc gc: kept " << object.kind << " " << object.name << ": "
                << removed.message() << "\n";
    }
  }
  for (const std::string& note : notes) std::cerr << "ipcrpc gc: " << note << "\n";
  if (stale.empty()) std::cout << "nothing to remove\n";
  if (failures > 0) return Failure{static_cast<int>(last_failure.code()), ""};
  return std::nullopt;
}

int Main(int argc, char** argv) {
  Args args;
  std::optional<Failure> failure = ParseArgs(argc, argv, &args);
  if (!failure.has_value()) {
    if (args.command == "ls") {
      failure = RunLs(args);
    } else if (args.command == "stats") {
      failure = RunStats(args);
    } else if (args.command == "call") {
      failure = RunCall(args);
    } else if (args.command == "gc") {
      failure = RunGc(args);
    } else if (args.command == "help") {
      std::cout << kUsage;
      return 0;
    } else if (args.command.empty()) {
      failure = Usage("no command");
    } else {
      failure = Usage(absl::StrCat("unknown command '", args.command, "'"));
    }
  }
  if (!failure.has_value()) return 0;
  const std::string command = args.command.empty() ? "" : " " + args.command;
  if (!failure->message.empty()) {
    std::cerr << "ipcrpc" << command << ": " << failure->message << "\n";
  }
  if (failure->code == kUsageError) std::cerr << kUsage;
  return failure->code == 0 ? 1 : failure->code;
}

}  // namespace
}  // namespace ipcrpc::cli

int main(int argc, char** argv) { return ipcrpc::cli::Main(argc, argv); }
