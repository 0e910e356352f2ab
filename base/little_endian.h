// Little-endian integers, as every field of ipcrpc's wire formats is
// (docs/PROTOCOL.md): the frame, the fifo: connect record, the mq: fragment
// header, the shm: handshake, the stream transports' length prefix. Byte by
// byte, so alignment and the host's byte order never matter.
#ifndef IPCRPC_BASE_LITTLE_ENDIAN_H_
#define IPCRPC_BASE_LITTLE_ENDIAN_H_

#include <cstdint>
#include <string>

namespace ipcrpc::internal {

// Writes the low `bytes` bytes of `value` at `p`.
inline void PutLe(char* p, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

// Appends the low `bytes` bytes of `value` to `out`.
inline void PutLe(std::string* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

// Reads a `bytes`-byte integer at `p`.
inline uint64_t GetLe(const char* p, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) {
    value |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  }
  return value;
}

}  // namespace ipcrpc::internal

#endif  // IPCRPC_BASE_LITTLE_ENDIAN_H_
