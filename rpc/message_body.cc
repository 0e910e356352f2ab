#include "ipcrpc/message_body.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream.h>

#include <algorithm>

#include "base/copy.h"

namespace ipcrpc::internal {
namespace {

// protobuf's output stream over OutputSpans. "Aliasing" (WriteAliasedRaw:
// protobuf hands over a large field's bytes instead of copying them itself)
// lets the field be copied here, by CopyBytes, at whatever distance the
// ring's position puts it from the field's heap block; protobuf's own
// memcpy would meet glibc's slow distance for some of those
// (base/copy.h). The bytes are copied at once, which aliasing permits.
class OutputSpansStream final : public google::protobuf::io::ZeroCopyOutputStream {
 public:
  explicit OutputSpansStream(OutputSpans* out) : out_(out) {}

  bool Next(void** data, int* size) override {
    absl::Span<char> span = out_->Next();
    if (span.empty()) return false;
    if (span.size() > static_cast<size_t>(INT_MAX)) {
      out_->BackUp(span.size() - INT_MAX);
      span = span.subspan(0, INT_MAX);
    }
    *data = span.data();
    *size = static_cast<int>(span.size());
    count_ += static_cast<int64_t>(span.size());
    return true;
  }

  void BackUp(int count) override {
    out_->BackUp(static_cast<size_t>(count));
    count_ -= count;
  }

  int64_t ByteCount() const override { return count_; }

  bool AllowsAliasing() const override { return true; }

  bool WriteAliasedRaw(const void* data, int size) override {
    const char* from = static_cast<const char*>(data);
    size_t left = static_cast<size_t>(size);
    while (left > 0) {
      absl::Span<char> span = out_->Next();
      if (span.empty()) return false;
      const size_t n = std::min(left, span.size());
      CopyBytes(span.data(), from, n);
      if (n < span.size()) out_->BackUp(span.size() - n);
      from += n;
      left -= n;
      count_ += static_cast<int64_t>(n);
    }
    return true;
  }

 private:
  OutputSpans* const out_;
  int64_t count_ = 0;
};

}  // namespace

void SerializeMessageTo(const google::protobuf::MessageLite& message, OutputSpans& out) {
  OutputSpansStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.EnableAliasing(true);
  message.SerializeWithCachedSizes(&coded);
  // (coded's destructor gives back the part of the last piece it did not
  // use.)
}

}  // namespace ipcrpc::internal
