#include "transports/read_watch.h"

namespace ipcrpc::internal::read_watch_internal {
namespace {

// Asio keeps the reactor's epoll descriptor private. An explicit
// instantiation's template arguments are not access-checked, the one door
// C++ leaves open to a private member: the instantiation below defines the
// friend function that reads it. Once per program, so here and not in the
// header.
template <int asio::detail::epoll_reactor::*Member>
struct EpollFdAccess {
  friend int EpollFdOfReactor(asio::detail::epoll_reactor& reactor) { return reactor.*Member; }
};
int EpollFdOfReactor(asio::detail::epoll_reactor& reactor);
template struct EpollFdAccess<&asio::detail::epoll_reactor::epoll_fd_>;

}  // namespace

int EpollFdOf(asio::detail::epoll_reactor& reactor) { return EpollFdOfReactor(reactor); }

}  // namespace ipcrpc::internal::read_watch_internal
