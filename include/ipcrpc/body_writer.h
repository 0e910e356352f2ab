// A message body that writes itself (a serializer) into memory the
// transport hands out, instead of being given as bytes: a large request is
// serialized straight into an shm: ring, with no copy of its own first
// (docs/PERFORMANCE.md, "Serialized in place"). Generated stubs make one
// (ipcrpc/message_body.h); Channel::CallMethodView takes it.
#ifndef IPCRPC_BODY_WRITER_H_
#define IPCRPC_BODY_WRITER_H_

#include <cstddef>

#include "absl/types/span.h"

namespace ipcrpc::internal {

// A body of this size or more is serialized by the transport, where it
// says (Connection::SendBodyWithin: straight into an shm: ring); a smaller
// one into a kept buffer first, then sent as bytes.
inline constexpr size_t kBodyInPlaceMin = 16 * 1024;

// Writable memory handed out piece by piece (the free space of a ring).
class OutputSpans {
 public:
  // The next piece to write into, never more than the body's bytes not
  // yet written; empty once the body is whole, or when the transport cannot
  // go on (closed, past the deadline, or asked for more than the body's
  // size): the writer then stops.
  virtual absl::Span<char> Next() = 0;
  // The last `n` bytes of the last piece were not written.
  virtual void BackUp(size_t n) = 0;

 protected:
  ~OutputSpans() = default;
};

// A body of size() bytes. The writer may be called more than once (a call
// sent again on a new connection) and from the calling thread only; what it
// serializes must not change meanwhile (as for any request a call holds).
class BodyWriter {
 public:
  explicit BodyWriter(size_t size) : size_(size) {}
  size_t size() const { return size_; }

  // Writes the body into `out`, piece after piece; the transport checks
  // that exactly size() bytes came (a message changed while it was
  // serialized comes out another size).
  virtual void WriteTo(OutputSpans& out) const = 0;
  // Writes the body into size() bytes at `data`.
  virtual void WriteFlat(char* data) const = 0;

 protected:
  ~BodyWriter() = default;

 private:
  const size_t size_;
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_BODY_WRITER_H_
