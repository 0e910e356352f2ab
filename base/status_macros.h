// Status helpers shared by every layer of ipcrpc (this abseil has no status
// macros of its own).
//
//   IPCRPC_RETURN_IF_ERROR(DoSomething());
//   IPCRPC_ASSIGN_OR_RETURN(auto fd, OpenSomething());
#ifndef IPCRPC_BASE_STATUS_MACROS_H_
#define IPCRPC_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define IPCRPC_RETURN_IF_ERROR(expr)                    \
  do {                                                  \
    ::absl::Status ipcrpc_status_ = (expr);             \
    if (!ipcrpc_status_.ok()) return ipcrpc_status_;    \
  } while (false)

#define IPCRPC_STATUS_CONCAT_INNER_(a, b) a##b
#define IPCRPC_STATUS_CONCAT_(a, b) IPCRPC_STATUS_CONCAT_INNER_(a, b)

#define IPCRPC_ASSIGN_OR_RETURN(lhs, expr) \
  IPCRPC_ASSIGN_OR_RETURN_IMPL_(IPCRPC_STATUS_CONCAT_(ipcrpc_statusor_, __LINE__), lhs, expr)

#define IPCRPC_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = *std::move(statusor)

#endif  // IPCRPC_BASE_STATUS_MACROS_H_
