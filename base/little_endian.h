// Little-endian integers, as every field of ipcrpc's wire formats is
// (docs/PROTOCOL.md): the frame, the fifo: connect record, the mq: fragment
// header, the shm: handshake, the stream transports' length prefix. Byte by
// byte, so alignment and the host's byte order never matter (on a
// little-endian host, 2-, 4- and 8-byte fields as one unaligned memcpy).
#ifndef IPCRPC_BASE_LITTLE_ENDIAN_H_
#define IPCRPC_BASE_LITTLE_ENDIAN_H_

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>

namespace ipcrpc::internal {

// Writes the low `bytes` bytes of `value` at `p`.
inline void PutLe(char* p, uint64_t value, int bytes) {
  if constexpr (std::endian::native == std::endian::little) {
    // One store where the host's order is the wire's (every call site's
    // `bytes` is a constant, so this folds to the one branch it takes):
    // byte by byte, a frame's header cost ~120 instructions to encode.
    if (bytes == 8) {
      std::memcpy(p, &value, 8);
      return;
    }
    if (bytes == 4) {
      const uint32_t v = static_cast<uint32_t>(value);
      std::memcpy(p, &v, 4);
      return;
    }
    if (bytes == 2) {
      const uint16_t v = static_cast<uint16_t>(value);
      std::memcpy(p, &v, 2);
      return;
    }
  }
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

// Appends the low `bytes` bytes of `value` to `out`.
inline void PutLe(std::string* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

// Reads a `bytes`-byte integer at `p`.
inline uint64_t GetLe(const char* p, int bytes) {
  if constexpr (std::endian::native == std::endian::little) {
    // One load each, as PutLe: the bytes are read once all the same.
    if (bytes == 8) {
      uint64_t v;
      std::memcpy(&v, p, 8);
      return v;
    }
    if (bytes == 4) {
      uint32_t v;
      std::memcpy(&v, p, 4);
      return v;
    }
    if (bytes == 2) {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return v;
    }
  }
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) {
    value |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  }
  return value;
}

}  // namespace ipcrpc::internal

#endif  // IPCRPC_BASE_LITTLE_ENDIAN_H_
